//! Cancellation tokens: every engine handed a cancelled token stops with an `Interrupted`
//! error naming the reason, changes nothing, and leaves no lock behind.

use backstop::policy::retention::KeepRules;
use backstop::repo::prune::PruneOptions;
use backstop::{Cancel, ErrorKind, NoProgress, Repo, RestoreOptions};

use super::common::*;

fn open(env: &Env, rt: &tokio::runtime::Runtime) -> Repo {
    let storage =
        backstop::Storage::open(env.repo().to_str().unwrap(), rt.handle().clone()).unwrap();
    Repo::open(storage, || Ok(PASSWORD.as_bytes().to_vec())).unwrap()
}

fn assert_interrupted<T>(what: &str, res: backstop::Result<T>) {
    match res {
        Ok(_) => panic!("{what}: ran to the end with a cancelled token"),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Interrupted, "{what}: {e}");
            assert!(e.to_string().contains("job stopped"), "{what}: {e}");
        }
    }
}

#[test]
fn every_engine_stops_on_a_cancelled_token_and_leaves_no_lock() {
    let env = Env::new();
    let src = env.path("src");
    for i in 0..4 {
        write(&src.join(format!("f{i}")), &noise(i, 300 << 10));
    }
    env.init();
    env.backup(&src, &[]);
    env.backup(&src, &["--full"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let repo = open(&env, &rt);
    let parent = Cancel::new();
    let cancel = parent.child();
    cancel.cancel("job stopped");
    let (sid, snap) = repo.snapshots().unwrap().snapshots.pop().unwrap();
    let target = env.path("out");
    let opts = RestoreOptions {
        target: target.clone(),
        cancel: cancel.clone(),
        ..Default::default()
    };
    assert_interrupted(
        "restore",
        backstop::restore::run(&repo, sid, &snap, &opts, &NoProgress),
    );
    assert!(
        std::fs::read_dir(&target).map_or(0, |d| d.count()) == 0,
        "restore wrote something"
    );
    assert_interrupted(
        "verify",
        backstop::verify::run(
            &repo,
            backstop::ReadData::All,
            &Default::default(),
            std::time::Duration::ZERO,
            &cancel,
            &NoProgress,
        ),
    );
    let rules = KeepRules {
        keep_last: Some(1),
        ..Default::default()
    };
    assert_interrupted(
        "forget",
        backstop::forget::run(
            &repo,
            backstop::forget::Selection::Rules(&rules),
            &chrono::Utc,
            chrono::Utc::now(),
            false,
            std::time::Duration::ZERO,
            &cancel,
        ),
    );
    assert_eq!(env.snapshots().len(), 2, "forget removed a snapshot");
    let prune = PruneOptions {
        cancel: cancel.clone(),
        ..Default::default()
    };
    assert_interrupted(
        "prune",
        backstop::repo::prune::run(&repo, &prune, chrono::Utc::now()),
    );
    assert_interrupted(
        "repair",
        backstop::repo::repair::run(&repo, false, std::time::Duration::ZERO, &cancel),
    );
    assert_interrupted(
        "repair snapshots",
        backstop::repo::repair::snapshots(&repo, false, std::time::Duration::ZERO, &cancel),
    );
    let index = std::sync::Arc::new(repo.load_index().unwrap());
    let mut walk = backstop::restore::Walk::new(&repo, &index, snap.tree, None).unwrap();
    let content = loop {
        let item = walk.next_item().unwrap().expect("a file in the snapshot");
        if !item.node.content.is_empty() {
            break item.node.content;
        }
    };
    drop(walk);
    let mut reader = repo.content_reader(index, content, 2, &cancel);
    let mut sink = Vec::new();
    let err = std::io::copy(&mut reader, &mut sink).unwrap_err();
    assert!(
        err.to_string().contains("job stopped"),
        "content reader: {err}"
    );
    let locks = std::fs::read_dir(env.repo().join("locks")).unwrap().count();
    assert_eq!(locks, 0, "a lock was left behind");
    // The parent was never cancelled: the same engines run to the end with it.
    backstop::verify::run(
        &repo,
        backstop::ReadData::All,
        &Default::default(),
        std::time::Duration::ZERO,
        &parent,
        &NoProgress,
    )
    .unwrap();
}

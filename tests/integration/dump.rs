//! `backstop dump` and `restore --to-command`: one file's content, in order and verified,
//! to standard output or into a command, with memory bounded whatever the file's size.

use std::io::Read;
use std::process::Stdio;

use super::common::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `backstop dump latest PATH` extracted by `tar -x` into `into`.
fn dump_extracted(env: &Env, path: &str, into: &std::path::Path) {
    std::fs::create_dir_all(into).unwrap();
    let o = env.run(&["dump", "latest", path]).output().unwrap();
    assert!(o.status.success(), "dump {path}: {}", stderr(&o));
    let mut tar = std::process::Command::new("tar")
        .args(["-x", "-p", "-f", "-", "-C"])
        .arg(into)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    tar.stdin.take().unwrap().write_all(&o.stdout).unwrap();
    let st = tar.wait().unwrap();
    assert!(st.success(), "tar -x of dump {path} failed");
}

#[test]
fn dump_of_a_directory_is_a_tar_stream_of_its_tree() {
    let env = Env::new();
    env.init();
    let (src, _) = source(&env);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(src.join("dir/sub"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::set_permissions(
        src.join("dir/sub/small.txt"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::symlink("sub/small.txt", src.join("dir/link")).unwrap();
    let long = "n".repeat(120);
    write(
        &src.join(format!("dir/sub/{long}/{long}.txt")),
        b"a long name",
    );
    std::fs::create_dir(src.join("dir/empty")).unwrap();
    // Whole seconds: a tar header holds no more.
    let st = std::process::Command::new("find")
        .arg(&src)
        .args(["-exec", "touch", "-h", "-d", "@1700000000", "{}", "+"])
        .status()
        .unwrap();
    assert!(st.success());
    env.backup(&src, &[]);

    // Relative to the snapshot root, and absolute as backed up: named from the directory.
    let out = env.path("x1");
    dump_extracted(&env, "dir", &out);
    assert_same_tree(&src.join("dir"), &out.join("dir"));
    let out = env.path("x2");
    dump_extracted(&env, &format!("{}/dir/sub", src.display()), &out);
    assert_same_tree(&src.join("dir/sub"), &out.join("sub"));
    let (a, b) = (
        std::fs::metadata(src.join("dir/sub")).unwrap(),
        std::fs::metadata(out.join("sub")).unwrap(),
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!((a.mode(), a.mtime()), (b.mode(), b.mtime()));
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        1,
        "only the dumped directory"
    );

    // restore --to-command still takes one file.
    let o = env
        .run(&[
            "restore",
            "latest",
            "--include",
            "dir/sub",
            "--to-command",
            "cat",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/dir/sub is a directory in the snapshot"),
        "{}",
        stderr(&o)
    );
}

/// A source with a file of several chunks and a hole, a small file and a directory.
fn source(env: &Env) -> (std::path::PathBuf, Vec<u8>) {
    let src = env.path("src");
    let mut big = noise(1, 6 << 20);
    big.extend(vec![0u8; 3 << 20]);
    big.extend(noise(2, 1 << 20));
    write(&src.join("dir/big.bin"), &big);
    write(&src.join("dir/sub/small.txt"), b"small file\n");
    write(&src.join("top.txt"), b"top\n");
    (src, big)
}

#[test]
fn dump_writes_one_file_in_order() {
    let env = Env::new();
    env.init();
    let (src, big) = source(&env);
    env.backup(&src, &[]);
    let abs = format!("{}/dir/big.bin", src.display());

    // Absolute as backed up, and relative to the snapshot root.
    for path in [abs.as_str(), "dir/big.bin", "/dir/big.bin"] {
        let o = env.run(&["dump", "latest", path]).output().unwrap();
        assert!(o.status.success(), "dump {path}: {}", stderr(&o));
        assert!(o.stdout == big, "dump {path} differs from the file");
    }
    let o = env
        .run(&["dump", "latest", "dir/sub/small.txt"])
        .output()
        .unwrap();
    assert_eq!(o.stdout, b"small file\n", "{}", stderr(&o));

    // A path that is not in the snapshot is refused, naming it.
    let o = env
        .run(&["dump", "latest", "dir/nothing"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no dir/nothing in the snapshot"),
        "{}",
        stderr(&o)
    );

    // A damaged pack: dump fails with a corruption error naming the chunk, and what it
    // wrote before that was verified content (a prefix of the file).
    for p in env.packs() {
        let mut bytes = std::fs::read(&p).unwrap();
        let at = bytes.len() / 3;
        bytes[at] ^= 0x55;
        std::fs::write(&p, bytes).unwrap();
    }
    let o = env
        .run(&["dump", "latest", "dir/big.bin"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(13), "{}", stderr(&o));
    assert!(stderr(&o).contains("is corrupt"), "{}", stderr(&o));
    assert!(big.starts_with(&o.stdout));
}

#[test]
fn restore_to_command_pipes_one_file_and_names_a_failing_command() {
    let env = Env::new();
    env.init();
    let (src, big) = source(&env);
    env.backup(&src, &[]);
    let out = env.path("piped");
    let cmd = format!("sh -c 'cat > \"$0\"' {}", out.display());
    let o = env
        .run(&[
            "restore",
            "latest",
            "--include",
            "dir/big.bin",
            "--to-command",
            &cmd,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(&out).unwrap() == big, "piped content differs");

    // Several files, or a directory, are refused before the command starts.
    let marker = env.path("started");
    let cmd = format!("touch {}", marker.display());
    let o = env
        .run(&[
            "restore",
            "latest",
            "--include",
            "dir",
            "--to-command",
            &cmd,
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));
    let o = env
        .run(&[
            "restore",
            "latest",
            "--include",
            "**/*.txt",
            "--to-command",
            &cmd,
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("holds 2 files"), "{}", stderr(&o));
    assert!(!marker.exists(), "the command ran for a refused selection");

    // A command that stops reading early (and exits 0) fails the restore.
    let o = env
        .run(&[
            "restore",
            "latest",
            "--include",
            "dir/big.bin",
            "--to-command",
            "head -c 10",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("command 'head -c 10' exited before reading all of /dir/big.bin"),
        "{}",
        stderr(&o)
    );

    // A failing command is an error naming it and its exit status.
    let o = env
        .run(&[
            "restore",
            "latest",
            "--include",
            "top.txt",
            "--to-command",
            "sh -c 'cat >/dev/null; exit 7'",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("command 'sh -c 'cat >/dev/null; exit 7'' failed with exit status 7"),
        "{e}"
    );
}

/// 1 GiB of deterministic pseudo-random bytes on standard output (AES-CTR over zeros).
const GIB_STREAM: &str = "openssl enc -aes-128-ctr -nosalt -K 00112233445566778899aabbccddeeff \
     -iv 0 < /dev/zero 2>/dev/null | head -c 1073741824";

fn hash_of(mut r: impl Read) -> (blake3::Hash, u64) {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).unwrap();
        if k == 0 {
            return (h.finalize(), n);
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
}

#[test]
fn dump_of_a_gibibyte_stream_is_byte_for_byte_in_bounded_memory() {
    let env = Env::new();
    env.init();
    env.run(&[
        "backup",
        "--stdin-from-command",
        &format!("sh -c '{GIB_STREAM}'"),
        "--stdin-filename",
        "stream.bin",
    ])
    .assert()
    .success();
    let expected = hash_of(
        std::process::Command::new("sh")
            .args(["-c", GIB_STREAM])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
            .stdout
            .take()
            .unwrap(),
    );
    assert_eq!(expected.1, 1 << 30);

    // The file has more than 512 chunks, so its content is held in content lists.
    let rss = env.path("dump.rss");
    let mut c = std::process::Command::new("/usr/bin/time");
    c.arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss)
        .arg(assert_cmd::cargo::cargo_bin("backstop"))
        .args(["dump", "latest", "stream.bin"])
        .env("BACKSTOP_PASSWORD", PASSWORD)
        .env("BACKSTOP_DATA_DIR", env.path("data"))
        .env("BACKSTOP_REPO", env.repo())
        .stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let got = hash_of(child.stdout.take().unwrap());
    assert!(child.wait().unwrap().success());
    assert_eq!(got, expected, "dumped stream differs");
    let kib: u64 = std::fs::read_to_string(&rss)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eprintln!("dump of 1 GiB: peak RSS {} MiB", kib / 1024);
    assert!(kib < 150 * 1024, "dump peaked at {} MiB", kib / 1024);
}

//! Recording that never stops a job: the catalog if it works, a warning if it does not.

use std::sync::atomic::{AtomicBool, Ordering};

use super::blocking::Catalog;
use crate::error::{Error, Result};

/// Records jobs in a catalog if there is a usable one, and otherwise lets them run.
///
/// Opening may fail (a corrupt file, an unwritable data directory, a database server down)
/// and so may any later statement (disk full, the file damaged under us, the server gone).
/// The first failure is logged once as a warning naming the catalog and its cause; from
/// then on nothing is recorded and every query answers `None`, so the operation itself goes
/// on: the repository is the source of truth and `backstop catalog rebuild` restores the
/// snapshot records later.
pub struct Recorder {
    catalog: Option<Catalog>,
    url: String,
    failed: AtomicBool,
}

impl Recorder {
    /// Opens the catalog at `url`, or a recorder that records nothing (warning once).
    pub fn open(url: &str) -> Recorder {
        match Catalog::open(url) {
            Ok(c) => Recorder::new(c, url),
            Err(e) => {
                let r = Recorder {
                    catalog: None,
                    url: super::redact(url),
                    failed: false.into(),
                };
                r.disable(&e);
                r
            }
        }
    }

    /// Records into an open catalog.
    pub fn new(catalog: Catalog, url: &str) -> Recorder {
        Recorder {
            catalog: Some(catalog),
            url: super::redact(url),
            failed: false.into(),
        }
    }

    /// Whether records are still being written.
    pub fn is_recording(&self) -> bool {
        self.catalog.is_some() && !self.failed.load(Ordering::Relaxed)
    }

    /// Runs `f` on the catalog; `None` if there is none or it fails (then it is disabled).
    pub fn with<T>(&self, f: impl FnOnce(&Catalog) -> Result<T>) -> Option<T> {
        if !self.is_recording() {
            return None;
        }
        let c = self.catalog.as_ref()?;
        match f(c) {
            Ok(t) => Some(t),
            Err(e) => {
                self.disable(&e);
                None
            }
        }
    }

    fn disable(&self, e: &Error) {
        if !self.failed.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "catalog {} is unusable ({}); going on without recording this run (the repository \
                 is the source of truth: `backstop catalog rebuild` restores the snapshot records)",
                self.url,
                crate::error::chain(e)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{NewRun, RunEnd};
    use super::*;

    #[test]
    fn a_catalog_failing_mid_run_stops_recording_and_lets_the_job_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
        let cat = Catalog::open(&url).unwrap();
        let rec = Recorder::new(cat.clone(), &url);
        let run = rec.with(|c| {
            c.claim_run(&NewRun {
                kind: "backup",
                ..Default::default()
            })
        });
        assert!(matches!(run, Some(Some(_))) && rec.is_recording());
        // The database goes away under the running job.
        cat.close().unwrap();
        let end = RunEnd {
            status: "success",
            ..Default::default()
        };
        assert!(
            rec.with(|c| c.finish_run(run.flatten().unwrap(), &end))
                .is_none()
        );
        assert!(!rec.is_recording());
        // From then on nothing is attempted.
        let mut called = false;
        assert!(
            rec.with(|_| {
                called = true;
                Ok(())
            })
            .is_none()
        );
        assert!(!called);
        // A catalog that cannot be opened gives a recorder that records nothing, and so
        // does a PostgreSQL server that is not there (nothing listens on port 1).
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let bad = format!("sqlite://{}", file.join("catalog.db").display());
        assert!(!Recorder::open(&bad).is_recording());
        assert!(!Recorder::open("postgres://backstop:pw@127.0.0.1:1/none").is_recording());
    }
}

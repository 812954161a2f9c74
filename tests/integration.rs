//! Integration tests: the real binary against real file systems (one test binary).

mod integration {
    pub mod common;

    mod backup_paths;
    mod cli;
    mod corruption;
    mod crash;
    mod faults;
    mod hostile;
    mod memory;
    mod prune;
    mod roundtrip;
}

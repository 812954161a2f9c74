//! Integration tests: the real binary against real file systems (one test binary).

mod integration {
    pub mod common;

    mod backup_paths;
    mod cancel;
    mod catalog;
    mod cli;
    mod command;
    mod corruption;
    mod crash;
    mod databases;
    mod dump;
    mod faults;
    mod format;
    mod hooks;
    mod hostile;
    mod locking;
    mod memory;
    mod output;
    mod prune;
    mod restore;
    mod retention;
    mod roundtrip;
    mod security;
    mod storage;
    mod wal;
}

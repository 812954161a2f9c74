//! Trees from hostile bytes.
#![no_main]
use backstop::repo::Tree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Tree::decode(data) {
        for n in &t.nodes {
            let _ = n.has_safe_name();
        }
        let _ = Tree::decode(&t.encode()).expect("re-encoded tree decodes");
    }
});

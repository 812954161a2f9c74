//! Cancellation: a token an engine checks at every step where it checks its lock; once the
//! token (or one it was made from) is cancelled, the engine stops there, cleans up and
//! returns an [`ErrorKind::Interrupted`] error saying why.
//!
//! The CLI hands engines the process's token, which SIGINT and SIGTERM cancel
//! ([`crate::interrupt::token`]); the daemon gives each job a [`Cancel::child`] of it, so one
//! job can be stopped alone and a signal stops them all.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, ErrorKind, Result};

/// A cancellation token; clones share it.
#[derive(Clone, Default)]
pub struct Cancel {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    reason: Mutex<String>,
    parent: Option<Cancel>,
}

impl Cancel {
    /// A token nobody has cancelled.
    pub fn new() -> Self {
        Cancel::default()
    }

    /// A token cancelled with this one, or on its own.
    pub fn child(&self) -> Self {
        Cancel {
            inner: Arc::new(Inner {
                parent: Some(self.clone()),
                ..Default::default()
            }),
        }
    }

    /// Cancels the token (and its children); `reason` ends up in the error, e.g. "SIGTERM".
    pub fn cancel(&self, reason: &str) {
        if let Ok(mut r) = self.inner.reason.lock()
            && r.is_empty()
        {
            *r = reason.to_string();
        }
        self.inner.cancelled.store(true, Ordering::SeqCst);
    }

    /// Whether the token, or one it was made from, was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
            || self.inner.parent.as_ref().is_some_and(Cancel::is_cancelled)
    }

    /// Why it was cancelled.
    pub fn reason(&self) -> String {
        if self.inner.cancelled.load(Ordering::SeqCst) {
            let r = self
                .inner
                .reason
                .lock()
                .map(|r| r.clone())
                .unwrap_or_default();
            if !r.is_empty() {
                return r;
            }
        }
        match &self.inner.parent {
            Some(p) if p.is_cancelled() => p.reason(),
            _ => "cancellation".to_string(),
        }
    }

    /// An error once cancelled: "SIGINT stopped the operation".
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            return Err(Error::new(
                ErrorKind::Interrupted,
                format!("{} stopped the operation", self.reason()),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cancel({})", self.is_cancelled())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_cancelled_with_its_parent_and_alone() {
        let root = Cancel::new();
        let (a, b) = (root.child(), root.child());
        a.cancel("job stopped");
        assert!(a.is_cancelled() && !b.is_cancelled() && !root.is_cancelled());
        assert_eq!(a.check().unwrap_err().kind(), ErrorKind::Interrupted);
        root.cancel("SIGTERM");
        assert!(b.is_cancelled());
        assert!(b.check().unwrap_err().to_string().contains("SIGTERM"));
        assert!(a.check().unwrap_err().to_string().contains("job stopped"));
    }
}

//! Channels for the data path's worker threads that block at once instead of spinning.
//!
//! `crossbeam-channel` spins and then calls `sched_yield` up to eight times before it parks a
//! thread that waits: on two cores, with walker, readers, sealers and uploaders all waiting
//! on each other, a backup of 2 GiB made 358,000 `sched_yield` calls, the waiting thread
//! taking the core the one it waits for needs (docs/DECISIONS.md). These park on a
//! condition variable, and wake a thread only when one waits.
//!
//! Multi-producer, multi-consumer, bounded or unbounded; `recv` fails once the channel is
//! empty and every sender is gone, `send` once every receiver is gone.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The other side of the channel is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnected;

struct Shared<T> {
    state: Mutex<State<T>>,
    readable: Condvar,
    writable: Condvar,
    cap: usize,
}

struct State<T> {
    queue: VecDeque<T>,
    senders: usize,
    receivers: usize,
    /// Threads parked on `readable` / `writable`: a notification costs a system call, so
    /// it is sent only when one waits.
    readers_waiting: usize,
    writers_waiting: usize,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A thread that panicked while holding the lock left the queue consistent (no user
        // code runs under it).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending side; clone it for more producers.
pub struct Sender<T>(Arc<Shared<T>>);

/// The receiving side; clone it for more consumers.
pub struct Receiver<T>(Arc<Shared<T>>);

/// A channel holding at most `cap` messages (at least one); `send` waits while it is full.
pub fn bounded<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    channel(cap.max(1))
}

/// A channel without a limit: `send` never waits.
pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    channel(usize::MAX)
}

fn channel<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            senders: 1,
            receivers: 1,
            readers_waiting: 0,
            writers_waiting: 0,
        }),
        readable: Condvar::new(),
        writable: Condvar::new(),
        cap,
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Sender<T> {
    /// Queues `msg`, waiting while the channel is full.
    pub fn send(&self, msg: T) -> Result<(), Disconnected> {
        let sh = &self.0;
        let mut st = sh.lock();
        while st.queue.len() >= sh.cap && st.receivers > 0 {
            st.writers_waiting += 1;
            st = sh.writable.wait(st).unwrap_or_else(|e| e.into_inner());
            st.writers_waiting -= 1;
        }
        if st.receivers == 0 {
            return Err(Disconnected);
        }
        st.queue.push_back(msg);
        if st.readers_waiting > 0 {
            sh.readable.notify_one();
        }
        Ok(())
    }

    /// Queues `msg` if there is room; gives it back if not.
    pub fn try_send(&self, msg: T) -> Result<(), T> {
        let sh = &self.0;
        let mut st = sh.lock();
        if st.queue.len() >= sh.cap || st.receivers == 0 {
            return Err(msg);
        }
        st.queue.push_back(msg);
        if st.readers_waiting > 0 {
            sh.readable.notify_one();
        }
        Ok(())
    }
}

impl<T> Receiver<T> {
    /// The next message, waiting for one; fails once the channel is empty and has no
    /// senders.
    pub fn recv(&self) -> Result<T, Disconnected> {
        let sh = &self.0;
        let mut st = sh.lock();
        loop {
            if let Some(msg) = st.queue.pop_front() {
                if st.writers_waiting > 0 {
                    sh.writable.notify_one();
                }
                return Ok(msg);
            }
            if st.senders == 0 {
                return Err(Disconnected);
            }
            st.readers_waiting += 1;
            st = sh.readable.wait(st).unwrap_or_else(|e| e.into_inner());
            st.readers_waiting -= 1;
        }
    }

    /// The next message if one is queued.
    pub fn try_recv(&self) -> Option<T> {
        let sh = &self.0;
        let mut st = sh.lock();
        let msg = st.queue.pop_front();
        if msg.is_some() && st.writers_waiting > 0 {
            sh.writable.notify_one();
        }
        msg
    }

    /// Messages until the channel is empty and has no senders.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(|| self.recv().ok())
    }
}

impl<T> IntoIterator for Receiver<T> {
    type Item = T;
    type IntoIter = IntoIter<T>;

    fn into_iter(self) -> IntoIter<T> {
        IntoIter(self)
    }
}

/// Messages until the channel is empty and has no senders.
pub struct IntoIter<T>(Receiver<T>);

impl<T> Iterator for IntoIter<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.0.recv().ok()
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Sender(self.0.clone())
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        self.0.lock().receivers += 1;
        Receiver(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.senders -= 1;
        if st.senders == 0 && st.readers_waiting > 0 {
            self.0.readable.notify_all();
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.receivers -= 1;
        if st.receivers == 0 {
            // Nobody will read what is queued: drop it now, and let waiting senders fail.
            let queued = std::mem::take(&mut st.queue);
            if st.writers_waiting > 0 {
                self.0.writable.notify_all();
            }
            drop(st);
            drop(queued);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_in_order_then_ends_when_senders_are_gone() {
        let (tx, rx) = bounded(2);
        std::thread::scope(|s| {
            s.spawn(move || {
                for i in 0..1000 {
                    tx.send(i).unwrap();
                }
            });
            assert_eq!(rx.iter().collect::<Vec<_>>(), (0..1000).collect::<Vec<_>>());
        });
        assert_eq!(rx.recv(), Err(Disconnected));
    }

    #[test]
    fn many_producers_and_consumers_lose_nothing() {
        let (tx, rx) = bounded::<u64>(3);
        let total = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for p in 0..4u64 {
                let tx = tx.clone();
                s.spawn(move || {
                    for i in 0..500 {
                        tx.send(p * 1000 + i).unwrap();
                    }
                });
            }
            drop(tx);
            for _ in 0..3 {
                let rx = rx.clone();
                let total = &total;
                s.spawn(move || {
                    for v in rx.iter() {
                        total.fetch_add(v, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        let want: u64 = (0..4u64)
            .flat_map(|p| (0..500).map(move |i| p * 1000 + i))
            .sum();
        assert_eq!(total.into_inner(), want);
    }

    #[test]
    fn a_full_channel_refuses_try_send_and_a_sender_fails_once_receivers_are_gone() {
        let (tx, rx) = bounded(1);
        tx.send(1).unwrap();
        assert_eq!(tx.try_send(2), Err(2));
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(rx.try_recv(), None);
        std::thread::scope(|s| {
            tx.send(3).unwrap();
            let blocked = s.spawn(|| tx.send(4));
            std::thread::sleep(std::time::Duration::from_millis(20));
            drop(rx);
            assert_eq!(blocked.join().unwrap(), Err(Disconnected));
        });
    }
}

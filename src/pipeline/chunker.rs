//! Content-defined chunking (FastCDC 2020) over any reader, with a seeded gear table.

use std::io::Read;

use fastcdc::v2020::{Normalization, cut_gear, get_gear_with_seed, select_masks};
use serde::{Deserialize, Serialize};

/// Chunk size bounds of a repository (stored in its config, so every client cuts alike).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ChunkerParams {
    /// Smallest chunk, except the last of a stream.
    pub min: u32,
    /// Target average.
    pub avg: u32,
    /// Largest chunk.
    pub max: u32,
}

impl Default for ChunkerParams {
    /// 512 KiB / 1 MiB / 8 MiB, as restic: large enough for fast I/O, small enough to dedup.
    fn default() -> Self {
        ChunkerParams {
            min: 512 * 1024,
            avg: 1024 * 1024,
            max: 8 * 1024 * 1024,
        }
    }
}

impl ChunkerParams {
    /// Whether the bounds are within what FastCDC supports and ordered.
    pub fn is_valid(&self) -> bool {
        use fastcdc::v2020::*;
        let (min, avg, max) = (self.min as usize, self.avg as usize, self.max as usize);
        (MINIMUM_MIN..=MINIMUM_MAX).contains(&min)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&avg)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max
            && min % 2 == 0
            && avg % 2 == 0
            && max % 2 == 0
    }
}

/// A reusable chunker: gear tables and masks computed once per repository.
#[derive(Clone)]
pub struct Chunker {
    params: ChunkerParams,
    masks: (u64, u64),
    gear: Vec<u64>,
    gear_ls: Vec<u64>,
}

impl Chunker {
    /// A chunker for `params` whose gear table is mixed with `seed`.
    pub fn new(params: ChunkerParams, seed: u64) -> Self {
        let (gear, gear_ls) = get_gear_with_seed(seed);
        Chunker {
            params,
            masks: select_masks(params.avg as usize, Normalization::Level1),
            gear: gear.into_owned(),
            gear_ls: gear_ls.into_owned(),
        }
    }

    /// The largest chunk this chunker emits.
    pub fn max_size(&self) -> usize {
        self.params.max as usize
    }

    /// Length of the first chunk of `data`; `data` must hold `max` bytes unless it is the end.
    pub fn cut(&self, data: &[u8]) -> usize {
        let p = &self.params;
        let (m_s, m_l) = self.masks;
        let (_, len) = cut_gear(
            data,
            p.min as usize,
            p.avg as usize,
            p.max as usize,
            m_s,
            m_l,
            m_s << 1,
            m_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        len
    }

    /// Reads `reader` to the end (at most `limit` bytes), calling `emit` with each chunk.
    ///
    /// `buf` is a scratch buffer reused across calls; it grows to 1.25 times the largest chunk.
    pub fn chunk_reader<R: Read, E>(
        &self,
        mut reader: R,
        limit: u64,
        buf: &mut Vec<u8>,
        mut emit: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<u64, E>
    where
        E: From<std::io::Error>,
    {
        let max = self.max_size();
        // Room for the largest chunk and then some: a refill moves only the unfinished chunk
        // to the front. Small files need only a small buffer (touching 10 MiB per file costs).
        let want =
            (max + max / 4).min(usize::try_from(limit.saturating_add(1)).unwrap_or(usize::MAX));
        let want = want.max(1);
        buf.reserve_exact(want.saturating_sub(buf.len()));
        buf.resize(want, 0);
        let (mut start, mut end, mut total, mut eof) = (0usize, 0usize, 0u64, false);
        loop {
            if start == end && eof {
                return Ok(total);
            }
            let at_hand = end - start;
            let len = if eof && at_hand <= self.params.min as usize {
                at_hand
            } else {
                self.cut(&buf[start..end])
            };
            // A cut before the end of the bytes at hand is final: FastCDC decides it from the
            // bytes before it. A chunk that may reach past them waits for more.
            if eof || len < at_hand || at_hand >= max {
                debug_assert!(len > 0);
                emit(&buf[start..start + len])?;
                start += len;
                continue;
            }
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
            while end < buf.len() && total < limit {
                let want = ((buf.len() - end) as u64).min(limit - total) as usize;
                let n = match reader.read(&mut buf[end..end + want]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                };
                if n == 0 {
                    break;
                }
                end += n;
                total += n as u64;
            }
            eof = end < buf.len() || total >= limit;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> Chunker {
        Chunker::new(
            ChunkerParams {
                min: 256,
                avg: 1024,
                max: 4096,
            },
            7,
        )
    }

    fn chunks(c: &Chunker, data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        c.chunk_reader::<_, std::io::Error>(data, u64::MAX, &mut buf, |ch| {
            out.push(ch.to_vec());
            Ok(())
        })
        .unwrap();
        out
    }

    fn data(seed: u64, len: usize) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..len).map(|_| rng.u8(..)).collect()
    }

    #[test]
    fn default_params_are_valid() {
        assert!(ChunkerParams::default().is_valid());
        assert!(
            !ChunkerParams {
                min: 4096,
                avg: 1024,
                max: 8192
            }
            .is_valid()
        );
    }

    #[test]
    fn limit_stops_reading() {
        let d = data(1, 10_000);
        let mut buf = Vec::new();
        let mut n = 0;
        let total = small()
            .chunk_reader::<_, std::io::Error>(&d[..], 3000, &mut buf, |c| {
                n += c.len();
                Ok(())
            })
            .unwrap();
        assert_eq!((total, n), (3000, 3000));
    }

    /// A reader that hands out at most `step` bytes per read.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    proptest! {
        #[test]
        fn cuts_do_not_depend_on_how_the_input_arrives(
            seed in any::<u64>(),
            len in 0usize..60_000,
            step in 1usize..10_000,
        ) {
            let c = small();
            let d = data(seed, len);
            // The cuts of the whole input at once.
            let mut whole = Vec::new();
            let mut at = 0;
            while at < d.len() {
                let n = c.cut(&d[at..]);
                whole.push(d[at..at + n].to_vec());
                at += n;
            }
            let mut read = Vec::new();
            let mut buf = Vec::new();
            c.chunk_reader::<_, std::io::Error>(Trickle(&d, step), u64::MAX, &mut buf, |ch| {
                read.push(ch.to_vec());
                Ok(())
            })
            .unwrap();
            prop_assert_eq!(read, whole);
        }

        #[test]
        fn chunks_concatenate_to_input(seed in any::<u64>(), len in 0usize..50_000) {
            let d = data(seed, len);
            let cs = chunks(&small(), &d);
            prop_assert_eq!(cs.concat(), d);
            for c in &cs[..cs.len().saturating_sub(1)] {
                prop_assert!(c.len() >= 256 && c.len() <= 4096);
            }
        }

        #[test]
        fn insertion_changes_only_nearby_chunks(seed in any::<u64>(), at in 0usize..150_000) {
            let d = data(seed, 200_000);
            let mut e = d.clone();
            e.splice(at..at, [1u8, 2, 3]);
            let a = chunks(&small(), &d);
            let b = chunks(&small(), &e);
            // Chunks that end before the insertion are untouched...
            let mut end = 0;
            for (x, y) in a.iter().zip(&b) {
                end += x.len();
                // FastCDC 2020 rolls two bytes a step: a cut may depend on the byte after it.
                if end >= at {
                    break;
                }
                prop_assert_eq!(x, y);
            }
            // ...and the chunker resynchronises soon after it: most chunks are shared.
            let common = a.iter().filter(|c| b.contains(c)).count();
            let changed = a.len() - common;
            prop_assert!(changed <= a.len() / 4 + 4, "{} of {} chunks changed", changed, a.len());
        }
    }
}

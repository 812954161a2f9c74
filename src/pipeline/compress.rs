//! zstd per chunk; chunks that do not shrink are stored raw.

use std::cell::RefCell;

use crate::error::{Error, Result};

thread_local! {
    // One zstd context per thread, reused: creating one per chunk costs time and memory.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compresses `data` at `level`; returns `None` when compression would not save space.
pub fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    if level == 0 || data.len() < 64 {
        return None;
    }
    let out = COMPRESSOR.with_borrow_mut(|slot| {
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        slot.as_mut()?.1.compress(data).ok()
    })?;
    // Keep compressed only if it saves at least 1/32 of the size: decompressing costs time.
    (out.len() + data.len() / 32 < data.len()).then_some(out)
}

/// Decompresses a blob whose plaintext length is known to be `raw_len`.
pub fn decompress(data: &[u8], raw_len: usize) -> Result<Vec<u8>> {
    let out = DECOMPRESSOR
        .with_borrow_mut(|slot| {
            if slot.is_none() {
                *slot = Some(zstd::bulk::Decompressor::new()?);
            }
            slot.as_mut().expect("just set").decompress(data, raw_len)
        })
        .map_err(|e| Error::corrupt(format!("zstd data is corrupt: {e}")))?;
    if out.len() != raw_len {
        return Err(Error::corrupt(format!(
            "decompressed to {} bytes, expected {raw_len}",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_raw_fallback() {
        let text = b"backstop ".repeat(1000);
        let c = compress(&text, 3).expect("text compresses");
        assert!(c.len() < text.len() / 10);
        assert_eq!(decompress(&c, text.len()).unwrap(), text);
        let mut rng = fastrand::Rng::with_seed(1);
        let noise: Vec<u8> = (0..10_000).map(|_| rng.u8(..)).collect();
        assert!(compress(&noise, 3).is_none());
        assert!(decompress(&c, text.len() - 1).is_err());
        assert!(decompress(b"garbage", 10).is_err());
    }
}

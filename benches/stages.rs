//! Micro-benchmarks of the hot pipeline stages: chunking, hashing, compression, sealing.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use backstop::pipeline::compress::compress;
use backstop::pipeline::{Chunker, ChunkerParams, Crypto, MasterKey};

fn data(len: usize, compressible: bool) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(42);
    if compressible {
        let words = [
            "backup",
            "restore",
            "drill",
            "verify ",
            "snapshot\n",
            "catalog",
            "2026-11-21 ",
        ];
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            v.extend_from_slice(words[rng.usize(..words.len())].as_bytes());
        }
        v.truncate(len);
        v
    } else {
        let mut v = vec![0u8; len];
        rng.fill(&mut v);
        v
    }
}

fn stages(c: &mut Criterion) {
    let random = data(64 << 20, false);
    let text = data(16 << 20, true);
    let chunk = &random[..1 << 20];

    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(random.len() as u64));
    g.sample_size(10);
    let chunker = Chunker::new(ChunkerParams::default(), 7);
    g.bench_function("fastcdc 64MiB", |b| {
        let mut buf = Vec::new();
        b.iter(|| {
            let mut n = 0;
            chunker
                .chunk_reader::<_, std::io::Error>(&random[..], u64::MAX, &mut buf, |c| {
                    n += c.len();
                    Ok(())
                })
                .unwrap();
            black_box(n)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("hashing");
    g.throughput(Throughput::Bytes(chunk.len() as u64));
    let keyed = Crypto::keyed(&MasterKey::generate());
    g.bench_function("blake3 1MiB", |b| {
        b.iter(|| black_box(Crypto::None.chunk_id(black_box(chunk))))
    });
    g.bench_function("blake3 keyed 1MiB", |b| {
        b.iter(|| black_box(keyed.chunk_id(black_box(chunk))))
    });
    g.finish();

    let mut g = c.benchmark_group("compression");
    g.throughput(Throughput::Bytes(1 << 20));
    g.bench_function("zstd3 text 1MiB", |b| {
        b.iter(|| black_box(compress(&text[..1 << 20], 3)))
    });
    g.bench_function("zstd3 random 1MiB", |b| {
        b.iter(|| black_box(compress(chunk, 3)))
    });
    g.finish();

    let mut g = c.benchmark_group("encryption");
    g.throughput(Throughput::Bytes(chunk.len() as u64));
    g.bench_function("xchacha20poly1305 seal 1MiB", |b| {
        b.iter(|| black_box(keyed.seal(chunk.to_vec())))
    });
    let sealed = keyed.seal(chunk.to_vec());
    g.bench_function("xchacha20poly1305 open 1MiB", |b| {
        b.iter(|| black_box(keyed.open(&sealed).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);

//! Bounded capture of a noisy test's output, side by side with keeping everything.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use orchestrator_core::BoundedCapture;
use std::hint::black_box;

fn capture(c: &mut Criterion) {
    let chunk = vec![b'x'; 64 * 1024];
    let total: usize = 64 << 20;
    let mut group = c.benchmark_group("capture-64MiB");
    group.throughput(Throughput::Bytes(total as u64));
    group.sample_size(20);
    for limit in [64 * 1024, 1 << 20] {
        group.bench_with_input(BenchmarkId::new("bounded", limit), &limit, |b, &limit| {
            b.iter(|| {
                let mut cap = BoundedCapture::new(limit);
                for _ in 0..total / chunk.len() {
                    cap.push(black_box(&chunk));
                }
                black_box(cap.finish())
            })
        });
    }
    group.bench_function("unbounded-vec", |b| {
        b.iter(|| {
            let mut all = Vec::new();
            for _ in 0..total / chunk.len() {
                all.extend_from_slice(black_box(&chunk));
            }
            black_box(String::from_utf8_lossy(&all).len())
        })
    });
    group.finish();
}

criterion_group!(benches, capture);
criterion_main!(benches);

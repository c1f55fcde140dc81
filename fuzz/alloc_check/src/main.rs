//! Checks that the hot paths allocate nothing: decoding a QoS 0 (and QoS 1) PUBLISH without
//! properties from a shared receive buffer, and `encode_publish` into a buffer with room.
//! Also prints a rough single-core decode/encode rate. `cargo run --release`.

#[allow(dead_code, unused_imports)]
#[path = "../../../broker/src/codec/mod.rs"]
mod codec;

use bytes::{Bytes, BytesMut};
use codec::{
    decode_packet, encode_publish, MqttStr, Packet, Properties, ProtocolVersion, Publish, QoS,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> usize {
    ALLOCS.load(Ordering::Relaxed)
}

fn publish(qos: QoS) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: MqttStr::from("sensors/building-1/floor-2/temperature"),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { 7 },
        properties: Properties::default(),
        payload: Bytes::from(vec![0x42; 64]),
    }
}

fn main() {
    const N: usize = 1_000_000;
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let p = publish(qos);
            let mut one = BytesMut::new();
            encode_publish(&p, version, &mut one);
            let mut stream = BytesMut::with_capacity(one.len() * N);
            for _ in 0..N {
                stream.extend_from_slice(&one);
            }
            // Make the receive buffer shared once, as the first split of a read loop does.
            let _first = stream.split_to(0);

            let before = allocs();
            let mut count = 0;
            while let Some(packet) = decode_packet(&mut stream, version, 1 << 20).unwrap() {
                assert!(matches!(packet, Packet::Publish(_)));
                count += 1;
            }
            let decode_allocs = allocs() - before;
            assert_eq!(count, N);

            let mut out = BytesMut::with_capacity(one.len() * N);
            let before = allocs();
            for _ in 0..N {
                encode_publish(&p, version, &mut out);
            }
            let encode_allocs = allocs() - before;
            assert_eq!(out.len(), one.len() * N);

            // Rates on a cache-resident buffer of 1,000 packets, refilled in place.
            let mut batch = Vec::new();
            for _ in 0..1000 {
                batch.extend_from_slice(&one);
            }
            let mut buf = BytesMut::with_capacity(batch.len());
            let start = Instant::now();
            for _ in 0..N / 1000 {
                buf.extend_from_slice(&batch);
                while let Some(packet) = decode_packet(&mut buf, version, 1 << 20).unwrap() {
                    std::hint::black_box(&packet);
                }
            }
            let decode_time = start.elapsed();
            let mut out = BytesMut::with_capacity(batch.len());
            let start = Instant::now();
            for _ in 0..N / 1000 {
                out.clear();
                for _ in 0..1000 {
                    encode_publish(std::hint::black_box(&p), version, &mut out);
                }
                std::hint::black_box(&out);
            }
            let encode_time = start.elapsed();

            println!(
                "{version:?} {qos:?}: decode {:.1} M/s ({decode_allocs} allocations for {N}), \
                 encode_publish {:.1} M/s ({encode_allocs} allocations)",
                N as f64 / decode_time.as_secs_f64() / 1e6,
                N as f64 / encode_time.as_secs_f64() / 1e6,
            );
            assert_eq!(decode_allocs, 0, "decoding a PUBLISH allocated");
            assert_eq!(encode_allocs, 0, "encode_publish allocated");
        }
    }
    println!("ok: no allocations on the PUBLISH hot paths");
}

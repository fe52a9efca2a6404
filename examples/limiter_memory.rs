//! How much memory the per-client rate limiter takes, and gives back.
//!
//! Builds the limiter as the gateway does (`[rate_limit] per_client`), feeds it 1,000,000
//! distinct client addresses (half IPv4, half IPv6), waits until every bucket is full again,
//! then runs the background task's sweep (`retain_recent` + `shrink_to_fit`) once. Prints
//! the resident set size (VmRSS, Linux) at each step and the bytes per key.
//!
//! ```text
//! cargo run --release --example limiter_memory
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use hookgate::config::Quota;

mod memory;
use hookgate::pipeline::rate_limit::{client_limiter, sweep};
use memory::rss_bytes;

const KEYS: u32 = 1_000_000;

fn main() {
    // The contract's example quota: a bucket is full again (burst + 1) / per_second = 2.02 s
    // after its client's last request.
    let quota = Quota {
        per_second: NonZeroU32::new(50).expect("non-zero"),
        burst: NonZeroU32::new(100).expect("non-zero"),
    };
    let stale_after = Duration::from_secs_f64(
        f64::from(quota.burst.get() + 1) / f64::from(quota.per_second.get()),
    );

    let before = rss_bytes();
    let limiter = client_limiter(quota);
    let started = Instant::now();
    for n in 0..KEYS {
        let ip = if n % 2 == 0 {
            // 10.0.0.0 upwards: distinct for every n below 2^24.
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
        } else {
            IpAddr::V6(Ipv6Addr::from((0x2001_0db8_u128 << 96) | u128::from(n)))
        };
        // A fresh client is always admitted; the check creates its bucket.
        if limiter.check_key(&ip).is_err() {
            eprintln!("unexpected refusal for a fresh client {ip}");
        }
    }
    let fed_in = started.elapsed();
    let filled = rss_bytes();
    let keys = limiter.len();

    std::thread::sleep(stale_after + Duration::from_millis(100));
    let started = Instant::now();
    sweep(&limiter);
    let swept_in = started.elapsed();
    let swept = rss_bytes();

    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let grown = filled.saturating_sub(before);
    println!(
        "quota: per_second = {}, burst = {}",
        quota.per_second, quota.burst
    );
    println!("RSS before:              {:8.1} MiB", mib(before));
    println!(
        "RSS with {keys} keys:    {:8.1} MiB  (+{:.1} MiB, fed in {fed_in:.2?})",
        mib(filled),
        mib(grown)
    );
    println!(
        "bytes per key:           {:8.1}",
        grown as f64 / f64::from(KEYS)
    );
    println!(
        "RSS after sweep:         {:8.1} MiB  ({} keys left, sweep took {swept_in:.2?})",
        mib(swept),
        limiter.len()
    );
}

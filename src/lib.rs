//! hookgate: a webhook gateway in front of legacy apps.
//!
//! A sender (FirstPromoter first of all) posts JSON events to one URL. hookgate answers with
//! exactly what the chosen upstream answered, so the sender's semantics hold end to end:
//! for `fulfilment_pending`, 200 means "fulfilled", another 2xx "keep pending", anything else
//! "retry later".
//!
//! The one invariant: hookgate never answers 200 unless an upstream answered 200 for that event
//! (now, or earlier and replayed from the dedup record).
//!
//! # Crate map, in the order a request travels
//!
//! - [`server`]: accepts connections (HTTP/1.1 and h2 on one port; TLS via [`server::tls`]),
//!   bounds their number, drains on shutdown; [`server::reload`] swaps config on SIGHUP.
//! - [`pipeline`]: [`pipeline::Gateway::handle`] runs the stages in the contract's order:
//!   - [`pipeline::receive`]: source by path, method, framing, bounded body (404/405/413/408);
//!   - [`pipeline::rate_limit`]: inbound limits before the body is read, upstream limits
//!     before a forward (429);
//!   - [`pipeline::authenticate`]: the source's verification over the raw bytes (401);
//!   - [`pipeline::parse`]: one JSON parse, event id and type at the source's pointers (400);
//!   - [`pipeline::route`]: event type (+ payload matches) to upstream(s);
//!   - [`pipeline::dedup`]: replay a recorded answer, join an in-flight forward, or claim it
//!     (in memory, and across replicas in Redis);
//!   - [`pipeline::settle`] and [`pipeline::forward`]: the upstream request ([`pipeline::redact`],
//!     [`pipeline::sign`]), in its own task so it outlives the sender;
//!   - [`pipeline::relay`]: upstream answer(s) to the sender's response.
//! - [`upstream`]: the pooled HTTP/HTTPS clients.
//! - [`config`]: the TOML file, typed and validated before anything binds.
//! - [`error`]: request errors and their single mapping to statuses.
//! - [`metrics`] and [`admin`]: what operators scrape and probe; [`logbuf`]: log lines of
//!   worker threads, written out in batches, as [`logformat`]'s JSON lines.
//! - [`demo`]: `hookgate demo`, the quick start's round trip with an example legacy app.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod logbuf;
pub mod logformat;
pub mod metrics;
pub mod pipeline;
pub mod server;
pub mod upstream;

pub use config::Config;

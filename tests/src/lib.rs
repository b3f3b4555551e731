//! End-to-end harness: real etcd, brokers and agents on ephemeral ports.
//!
//! # Layout
//! - `etcd.rs`: starts a real etcd server per test (fails loudly in CI when missing).
//! - `process.rs`: `hearth-broker` / `hearth-agent` processes on free ports, `kill -9`.
//! - `netns.rs`: network namespaces joined to the host by a veth pair (network cuts).
//! - `eventually.rs`: polling with a deadline.
//! - `api.rs`: small client helpers over the generated gRPC clients.
//! - `readme.rs`: the README's marked sections, which tests run as written, and grpcurl.
//! - `sim_agent.rs`: SIMULATED node agents, many per process, speaking the real
//!   `NodeAgent.Connect` protocol (no GPU or workload is real).
//! - `allocations.rs`: audits GPU allocations straight from etcd (double bookings).
//! - `bench_scale.rs`: `hearth-bench scale`, a broker on etcd against a simulated fleet.
//! - `bench_chaos.rs`: `hearth-bench chaos`, turns under random faults, then invariants.
//! - `report.rs`: what every benchmark prints (machine, figures, the JSON line).
//! - `tenants.rs`: tenant tokens (`hearth token create`) and a broker started on them.

pub mod allocations;
pub mod api;
pub mod bench_chaos;
pub mod bench_scale;
pub mod etcd;
pub mod eventually;
pub mod images;
pub mod netns;
pub mod process;
pub mod readme;
pub mod report;
pub mod sim_agent;
pub mod tenants;

pub use eventually::eventually;

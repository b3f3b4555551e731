//! End-to-end harness: real etcd, brokers and agents on ephemeral ports.
//!
//! # Layout
//! - `etcd.rs`: starts a real etcd server per test (fails loudly in CI when missing).
//! - `process.rs`: `hearth-broker` / `hearth-agent` processes on free ports, `kill -9`.
//! - `netns.rs`: network namespaces joined to the host by a veth pair (network cuts).
//! - `eventually.rs`: polling with a deadline.
//! - `events.rs`: cluster events collected as they arrive, to wait on.
//! - `api.rs`: small client helpers over the generated gRPC clients.
//! - `compose.rs`: the compose cluster of `deploy/compose`, under a project of the test's
//!   own, taken down on drop.
//! - `cluster.rs`: brokers on one etcd: waiting for a leader, a leader with a standby.
//! - `python.rs`: the Python client installed into a fresh virtualenv.
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
pub mod cluster;
pub mod compose;
pub mod etcd;
pub mod events;
pub mod eventually;
pub mod images;
pub mod netns;
pub mod process;
pub mod python;
pub mod readme;
pub mod report;
pub mod sim_agent;
pub mod tenants;

pub use eventually::eventually;

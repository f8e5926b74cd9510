//! Integration tests over the wire: the emulator on AWS_ENDPOINT_URL (moto or LocalStack) and
//! the local runner, as `make test` starts them. Every test provisions its own copy of the
//! stack from template.yaml under a unique name, so the suite runs in parallel.

mod api;
mod asyncapi;
mod bridge;
mod burst;
mod calls;
mod certificate;
mod chaos;
mod contract;
mod crash;
mod demo;
mod dispatch;
mod erasure;
mod event_source;
mod helpers;
mod holders;
mod hops;
mod hostile;
mod ops;
mod ops_page;
mod report;
mod runner;
mod runtime_api;
mod sweep;
mod template;

//! The local stack: provisions `template.yaml` into the emulator and hosts every function in
//! one process, with API Gateway's and SQS event source mappings' semantics.

pub mod broker_users;
pub mod call_count;
pub mod demo;
pub mod erasing_services;
pub mod event_source;
pub mod fake_services;
pub mod fault_proxy;
pub mod gateway;
pub mod jwt;
pub mod metric_check;
pub mod provision;
pub mod runtime_api;
pub mod stack;
pub mod template;

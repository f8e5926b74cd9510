//! Adapters for the domain's ports. Each cloud adapter sits behind a cargo feature so that a
//! function links only the SDKs it uses; the in-memory adapters (feature `memory`) are for unit
//! tests only.

#[cfg(all(
    feature = "aws",
    not(any(feature = "hyper-client", feature = "reqwest-client"))
))]
compile_error!("an AWS client needs an HTTP client: enable `hyper-client` or `reqwest-client`");

#[cfg(feature = "lambda")]
pub mod batch;
#[cfg(feature = "collect")]
pub mod collect;
#[cfg(feature = "collect")]
pub mod collect_rabbitmq;
pub mod config;
#[cfg(feature = "dynamodb")]
pub mod dynamodb;
pub mod emf;
#[cfg(feature = "erase")]
pub mod erase;
#[cfg(any(feature = "collect", feature = "erase"))]
pub mod http;
#[cfg(any(feature = "collect", feature = "erase"))]
pub mod identity;
pub mod logging;
#[cfg(any(test, feature = "memory"))]
pub mod memory;
pub mod registry;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(feature = "scheduler")]
pub mod scheduler;
#[cfg(feature = "reqwest-client")]
pub mod sdk_http;
#[cfg(feature = "sign")]
pub mod signing;
#[cfg(feature = "sqs")]
pub mod sqs;
#[cfg(all(feature = "dynamodb", feature = "sqs"))]
pub mod wiring;

//! Adapters for the domain's ports. Each cloud adapter sits behind a cargo feature so that a
//! function links only the SDKs it uses; the in-memory adapters are always there, for unit tests.

#[cfg(feature = "dynamodb")]
pub mod dynamodb;
pub mod memory;
#[cfg(feature = "sqs")]
pub mod sqs;
#[cfg(all(feature = "dynamodb", feature = "sqs"))]
pub mod wiring;

//! The event path: S3 event notifications read from SQS move records forward without waiting for
//! a sweep. `parse` knows the message shapes, `effect` what one event does, `sqs` the queue,
//! `gate` how the pollers stop receiving together while a dependency is down, `hold` what
//! becomes of an event whose dependency is down, `folder` the file
//! notifications of a folder bucket, taking the same effect path.

pub mod effect;
pub mod folder;
pub mod gate;
pub mod hold;
pub mod parse;
#[cfg(feature = "s3")]
pub mod sqs;

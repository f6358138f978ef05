//! The event path: S3 event notifications read from SQS move records forward without waiting for
//! a sweep. `parse` knows the message shapes, `effect` what one event does, `sqs` the queue.

pub mod effect;
pub mod parse;
pub mod sqs;

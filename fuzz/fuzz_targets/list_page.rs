//! Any bytes as the body of a successful ListObjectsV2 answer, through the sweep's own parser
//! (`bucket::list_page::parse`) and through the SDK's deserializer (`list_page::sdk_decode`), the
//! one the sweep used before and still falls back on. The parser may leave a page to the SDK
//! (`Refused::Unread`); what it reads, it must read exactly as the SDK does:
//!
//! - a page it reads, the SDK reads too, to the same objects (key decoded, size, ETag, time),
//!   the same truncation flag and continuation token;
//! - a page with a key it names as undecodable (`Refused::Key`), the SDK refuses too (for that
//!   key, or for a field after it: the parser stops at the key); the sweep hands such a page to
//!   the SDK, so its error is the SDK's either way;
//! - it never panics, and its work is bounded (no input of `-max_len` takes long).
#![no_main]

use libfuzzer_sys::fuzz_target;
use upload_reconciler::bucket::list_page::{Refused, parse, sdk_decode};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(page) => {
            let sdk = sdk_decode(data);
            assert_eq!(
                sdk.as_ref(),
                Ok(&page),
                "the parser read {:?} otherwise than the SDK",
                String::from_utf8_lossy(data)
            );
        }
        Err(Refused::Key(raw)) => {
            // The sweep hands such a page to the SDK too. The SDK refuses it, for this key or
            // for a field after it that it cannot read (the parser stops at the key).
            let sdk = sdk_decode(data);
            assert!(
                sdk.is_err(),
                "the parser refused key {raw:?}, the SDK read {sdk:?}"
            );
        }
        Err(Refused::Unread(_)) => {}
    }
});

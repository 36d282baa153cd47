//! The pgoutput decoder on arbitrary bytes: it may refuse anything, but never panic, and what
//! it accepts must not depend on bytes it did not read (a prefix of an accepted message is
//! refused, since every message is length-exact).

#![no_main]

use bytes::Bytes;
use cdc_consumer::replication::pgoutput::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let data = Bytes::copy_from_slice(data);
    if decode(data.clone()).is_ok() && !data.is_empty() {
        assert!(decode(data.slice(..data.len() - 1)).is_err(), "a truncated message decoded");
    }
});

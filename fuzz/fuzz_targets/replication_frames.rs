//! The replication socket's parsing on arbitrary bytes: backend frames split off a buffer as
//! they would arrive from the network (in pieces), and every CopyData body parsed as the
//! replication protocol. Never a panic, and splitting the input differently gives the same
//! frames.

#![no_main]

use bytes::BytesMut;
use cdc_consumer::replication::protocol::{next_frame, parse_copy_data};
use libfuzzer_sys::fuzz_target;

fn frames(data: &[u8], piece: usize) -> Vec<(u8, Vec<u8>)> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in data.chunks(piece.max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            match next_frame(&mut buf) {
                Ok(Some((tag, body))) => {
                    if tag == b'd' {
                        let _ = parse_copy_data(body.clone());
                    }
                    out.push((tag, body.to_vec()));
                }
                Ok(None) => break,
                Err(_) => return out,
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, data)) = data.split_first() else {
        return;
    };
    assert_eq!(frames(data, usize::from(piece)), frames(data, data.len()));
});

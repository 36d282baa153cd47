//! The event rule on arbitrary message sequences: the input is a series of pgoutput messages,
//! each prefixed by a 2-byte length, fed to one `EventBuilder` after the Relation messages of
//! the real tables. Whatever arrives, in whatever order, it may refuse but never panic.

#![no_main]

use bytes::Bytes;
use cdc_consumer::events::EventBuilder;
use cdc_consumer::replication::pgoutput::decode;
use cdc_consumer::replication::Lsn;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let games = [shared::Game {
        id: 1,
        slug: "crash".into(),
        name: "Crash".into(),
        game_type: "multiplier".into(),
    }];
    let mut builder = EventBuilder::new(games, Lsn(0x100));
    let mut changes = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let end = (2 + len).min(rest.len());
        let message = Bytes::copy_from_slice(&rest[2..end]);
        rest = &rest[end..];
        if let Ok(message) = decode(message) {
            if builder.apply(message, &mut changes).is_err() {
                return;
            }
        }
    }
});

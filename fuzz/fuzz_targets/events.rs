//! The event rule on arbitrary message sequences: the input is a series of pgoutput messages,
//! each prefixed by a 2-byte length, fed to one `EventBuilder` after the Relation messages of
//! the real tables. Whatever arrives, in whatever order, it may refuse but never panic.

#![no_main]

use cdc_consumer::events::EventBuilder;
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
    builder.apply_length_prefixed(data, &mut Vec::new());
});

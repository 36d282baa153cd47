//! The short fuzzing run CI can afford: the captured fixtures, mutated deterministically (bit
//! flips, byte edits, truncations, splices), through the same entry points as the cargo-fuzz
//! targets in `fuzz/`: the pgoutput decoder, the replication frame parser and the event rule.
//! Nothing may panic. The long, coverage-guided runs are `scripts/fuzz` (docs/fuzzing.md).

use std::path::Path;

use bytes::{Bytes, BytesMut};
use cdc_consumer::events::EventBuilder;
use cdc_consumer::replication::pgoutput::decode;
use cdc_consumer::replication::protocol::{next_frame, parse_copy_data};
use cdc_consumer::replication::Lsn;

const ROUNDS: usize = 30_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn fixtures(dir: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .expect("fixture directory")
        .map(|e| e.expect("fixture entry").path())
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read(p).expect("fixture file"))
        .collect()
}

/// The catalog the event rule starts from: the `crash` game.
fn crash_catalog() -> [shared::Game; 1] {
    [shared::Game {
        id: 1,
        slug: "crash".into(),
        name: "Crash".into(),
        game_type: "multiplier".into(),
    }]
}

fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = [0, 0xFF, 0x7F, 0x80][rng.below(4)];
            }
            2 => {
                let at = rng.below(out.len() + 1);
                out.insert(at, rng.next() as u8);
            }
            3 if !out.is_empty() => {
                out.remove(rng.below(out.len()));
            }
            4 => out.truncate(rng.below(out.len() + 1)),
            _ => {
                let at = rng.below(out.len() + 1);
                let from = rng.below(other.len() + 1);
                out.splice(at..at, other[from..].iter().copied().take(16));
            }
        }
    }
    out
}

#[test]
fn mutated_pgoutput_messages_never_panic_the_decoder_or_the_event_rule() {
    let corpus = fixtures("pgoutput");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut accepted = 0;
    for _ in 0..ROUNDS {
        let a = &corpus[rng.below(corpus.len())];
        let b = &corpus[rng.below(corpus.len())];
        let mutated = Bytes::from(mutate(&mut rng, a, b));
        if decode(mutated).is_ok() {
            accepted += 1;
        }
    }
    // Some mutations keep a message valid (a changed value byte): the decoder saw both kinds.
    assert!(
        accepted > 0 && accepted < ROUNDS,
        "accepted {accepted} of {ROUNDS}"
    );

    // Whole captured sessions with a few messages mutated, through one event builder each.
    for _ in 0..ROUNDS / 100 {
        let mut builder = EventBuilder::new(crash_catalog(), Lsn::ZERO);
        let mut changes = Vec::new();
        for message in &corpus {
            let message = if rng.below(8) == 0 {
                mutate(&mut rng, message, message)
            } else {
                message.clone()
            };
            if let Ok(decoded) = decode(Bytes::from(message)) {
                if builder.apply(decoded, &mut changes).is_err() {
                    break;
                }
            }
        }
    }
}

/// Inputs that once crashed a cargo-fuzz target (`fuzz/artifacts/`), kept as fixtures: each must
/// go through the target's entry point without a panic. The `events` target's input is a series
/// of pgoutput messages, each after a 2-byte big-endian length.
#[test]
fn fuzz_findings_stay_fixed() {
    for finding in fixtures("fuzz-events") {
        let mut builder = EventBuilder::new(crash_catalog(), Lsn(0x100));
        builder.apply_length_prefixed(&finding, &mut Vec::new());
    }
}

#[test]
fn mutated_replication_streams_never_panic_the_frame_parser() {
    let bodies = fixtures("copydata");
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    for _ in 0..ROUNDS {
        let mut stream = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let body = &bodies[rng.below(bodies.len())];
            stream.push(b'd');
            stream.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
            stream.extend_from_slice(body);
        }
        let stream = mutate(&mut rng, &stream, &bodies[0]);
        let mut buf = BytesMut::new();
        for chunk in stream.chunks(1 + rng.below(64)) {
            buf.extend_from_slice(chunk);
            while let Ok(Some((tag, body))) = next_frame(&mut buf) {
                if tag == b'd' {
                    let _ = parse_copy_data(body);
                }
            }
        }
    }
}

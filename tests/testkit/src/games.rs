//! The games `migrations/002_seed_games.sql` seeds, as the `games` KV bucket holds them.

use shared::Game;

/// The seeded games (slug → type), with ids in seeding order and their names as the migration
/// writes them (the slug's words capitalised: `aviator-wars` → `Aviator Wars`).
pub fn seeded_games() -> Vec<Game> {
    let games = [
        ("crash", "multiplier"),
        ("aviador", "multiplier"),
        ("aviator-wars", "multiplier"),
        ("foguetinho", "multiplier"),
        ("motograu", "multiplier"),
        ("motograu-v2", "multiplier"),
        ("free-style", "multiplier"),
        ("freestyle-v2", "multiplier"),
        ("pipa-brazil", "multiplier"),
        ("slot", "multiplier"),
        ("fortune-dragon", "multiplier"),
        ("double", "color"),
        ("dice", "dice"),
        ("plinko", "plinko"),
        ("wall-street", "trend"),
    ];
    games
        .iter()
        .zip(1..)
        .map(|(&(slug, game_type), id)| Game {
            id,
            slug: slug.to_owned(),
            name: title(slug),
            game_type: game_type.to_owned(),
        })
        .collect()
}

fn title(slug: &str) -> String {
    slug.split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded() {
        let games = seeded_games();
        assert_eq!(games.len(), 15);
        assert_eq!(games[0].name, "Crash");
        assert_eq!(games[2].name, "Aviator Wars");
        assert_eq!(games[5].name, "Motograu V2");
        assert_eq!(games[11].game_type, "color");
        assert_eq!(games[14].id, 15);
    }
}

-- The platform's games. Existing rows are left as they are.

INSERT INTO games (id, slug, name, type) VALUES
    (1,  'crash',          'Crash',          'multiplier'),
    (2,  'aviador',        'Aviador',        'multiplier'),
    (3,  'aviator-wars',   'Aviator Wars',   'multiplier'),
    (4,  'foguetinho',     'Foguetinho',     'multiplier'),
    (5,  'motograu',       'Motograu',       'multiplier'),
    (6,  'motograu-v2',    'Motograu V2',    'multiplier'),
    (7,  'free-style',     'Free Style',     'multiplier'),
    (8,  'freestyle-v2',   'Freestyle V2',   'multiplier'),
    (9,  'pipa-brazil',    'Pipa Brazil',    'multiplier'),
    (10, 'slot',           'Slot',           'multiplier'),
    (11, 'fortune-dragon', 'Fortune Dragon', 'multiplier'),
    (12, 'double',         'Double',         'color'),
    (13, 'dice',           'Dice',           'dice'),
    (14, 'plinko',         'Plinko',         'plinko'),
    (15, 'wall-street',    'Wall Street',    'trend')
ON CONFLICT (id) DO NOTHING;

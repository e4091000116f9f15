//! A user's sessions and the one rule ranking them (CONTRACT section 10).
//!
//! A user holds at most one app session (its own heartbeats) and a few game-server sessions
//! (reports of the servers it plays on). The entry shown is the highest-ranked live
//! session: game-server sessions first, the most recently joined among them, then the app
//! session. When none is live the user is Offline at the location it showed last: the
//! session that ended last, the higher-ranked one when several ended at once.
//!
//! Both backends call [`pick`] and [`last_shown`]; the Redis scripts carry their own
//! encoding of the same rule, and one table of cases (the tests below, and
//! `redis::scripts`' tests) drives both.

use std::num::NonZeroI64;

use super::model::{starts_with_studio, AppReport, PlaceInfo};
use super::places::PlaceCatalog;
use super::Location;

/// Which session a user shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The game-server session at this index of the list given.
    Game(usize),
    App,
}

/// One game-server session as the ranking sees it: its join order among the user's
/// sessions (higher joined later) and when it ends.
pub trait Ranked<T> {
    fn joined(&self) -> u32;
    fn deadline(&self) -> T;
}

impl<T: Copy> Ranked<T> for (u32, T) {
    fn joined(&self) -> u32 {
        self.0
    }
    fn deadline(&self) -> T {
        self.1
    }
}

impl<T, G: Ranked<T>> Ranked<T> for &G {
    fn joined(&self) -> u32 {
        (**self).joined()
    }
    fn deadline(&self) -> T {
        (**self).deadline()
    }
}

/// The session shown at `now`: the live game session joined last, else the live app
/// session; `None` when nothing is live (the user is Offline). A session is live while
/// `now < deadline`; `app` is the app session's deadline, if it has one. `Pick::Game(i)` is
/// the `i`-th of `games` in their order.
pub fn pick<T, G, I>(app: Option<T>, games: I, now: T) -> Option<Pick>
where
    T: Ord + Copy,
    G: Ranked<T>,
    I: IntoIterator<Item = G>,
{
    let game = games
        .into_iter()
        .enumerate()
        .filter(|(_, g)| now < g.deadline())
        .max_by_key(|(_, g)| g.joined())
        .map(|(i, _)| Pick::Game(i));
    game.or_else(|| app.filter(|&deadline| now < deadline).map(|_| Pick::App))
}

/// The session an Offline user shows the location of: the one that ended last (the
/// greatest deadline), ranked as [`pick`] ranks when several ended at the same moment.
/// `None` when the user has no session at all.
pub fn last_shown<T, G, I>(app: Option<T>, games: I) -> Option<Pick>
where
    T: Ord + Copy,
    G: Ranked<T>,
    I: IntoIterator<Item = G>,
    I::IntoIter: Clone,
{
    let games = games.into_iter();
    let last = games.clone().map(|g| g.deadline()).chain(app).max()?;
    let game = games
        .enumerate()
        .filter(|(_, g)| g.deadline() == last)
        .max_by_key(|(_, g)| g.joined())
        .map(|(i, _)| Pick::Game(i));
    Some(game.unwrap_or(Pick::App))
}

/// The join order a new game session of a user gets: above every one it holds.
pub fn next_join<T, G: Ranked<T>>(games: impl IntoIterator<Item = G>) -> u32 {
    games
        .into_iter()
        .map(|g| g.joined())
        .max()
        .map_or(0, |j| j.saturating_add(1))
}

/// The session a join must end to stay within `max` game sessions: the oldest-joined, when
/// the user already holds `max`.
pub fn evicted_by_join<T, G, I>(games: I, max: usize) -> Option<usize>
where
    G: Ranked<T>,
    I: IntoIterator<Item = G>,
    I::IntoIter: ExactSizeIterator,
{
    let games = games.into_iter();
    if games.len() < max {
        return None;
    }
    games
        .enumerate()
        .min_by_key(|(_, g)| g.joined())
        .map(|(i, _)| i)
}

/// Where a game server's players are, as section 1 derives it from a place: the catalog's
/// place name (or `Playing`), its root place and universe, `universeId` overriding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GamePlace {
    pub place: PlaceInfo,
    pub location: Location,
}

impl GamePlace {
    /// `None` when `place_id` is not positive.
    pub fn new(place_id: i64, universe_id: Option<i64>, catalog: &PlaceCatalog) -> Option<Self> {
        if place_id <= 0 {
            return None;
        }
        let known = catalog.get(place_id);
        let universe = universe_id.and_then(NonZeroI64::new);
        Some(Self {
            place: PlaceInfo {
                place_id,
                root_place_id: known.map_or(place_id, |p| p.root_place_id),
                universe_id: universe.or(known.and_then(|p| NonZeroI64::new(p.universe_id))),
            },
            location: known.map_or_else(Location::playing, |p| p.name.clone()),
        })
    }
}

impl<'a> AppReport<'a> {
    /// This report as `presence.client_reported_games = false` takes it: outside Studio,
    /// its place, game and universe make no InGame session.
    pub fn without_games(self) -> Self {
        if self.location.is_some_and(starts_with_studio) {
            return self;
        }
        Self {
            place_id: None,
            game_id: None,
            universe_id: None,
            ..self
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The table of cases shared with the Redis scripts' encoding of the rule: the app
    /// session's deadline, the game sessions (join order, deadline), the time, and what is
    /// shown then (`None`: Offline) and, for an Offline user, whose location it keeps.
    #[allow(clippy::type_complexity)]
    pub(crate) const CASES: &[(Option<i64>, &[(u32, i64)], i64, Option<Pick>, Option<Pick>)] = &[
        // App only: live, then ended.
        (Some(10), &[], 5, Some(Pick::App), Some(Pick::App)),
        (Some(10), &[], 10, None, Some(Pick::App)),
        // Game only.
        (
            None,
            &[(0, 10)],
            9,
            Some(Pick::Game(0)),
            Some(Pick::Game(0)),
        ),
        (None, &[(0, 10)], 10, None, Some(Pick::Game(0))),
        // Both: the game wins while live, the app shows after it ends.
        (
            Some(20),
            &[(0, 10)],
            5,
            Some(Pick::Game(0)),
            Some(Pick::App),
        ),
        (Some(20), &[(0, 10)], 15, Some(Pick::App), Some(Pick::App)),
        // The app outlived by the game: Offline at the game's location.
        (Some(10), &[(0, 20)], 25, None, Some(Pick::Game(0))),
        // Ended at the same moment: the game ranks first.
        (Some(10), &[(0, 10)], 10, None, Some(Pick::Game(0))),
        // Two games: the later join wins, whatever the order of the list.
        (
            None,
            &[(3, 10), (1, 20)],
            5,
            Some(Pick::Game(0)),
            Some(Pick::Game(1)),
        ),
        (
            None,
            &[(1, 20), (3, 10)],
            5,
            Some(Pick::Game(1)),
            Some(Pick::Game(0)),
        ),
        // The later join has ended: the earlier one shows.
        (
            Some(30),
            &[(3, 10), (1, 20)],
            15,
            Some(Pick::Game(1)),
            Some(Pick::App),
        ),
        // Same deadline, two games: the later join's location stays.
        (None, &[(1, 10), (2, 10)], 12, None, Some(Pick::Game(1))),
        // Nothing at all.
        (None, &[], 0, None, None),
    ];

    #[test]
    fn the_ranking_rule_holds_for_every_case_of_the_table() {
        for (i, &(app, games, now, shown, last)) in CASES.iter().enumerate() {
            assert_eq!(pick(app, games, now), shown, "case {i}: shown");
            assert_eq!(last_shown(app, games), last, "case {i}: last shown");
        }
    }

    #[test]
    fn a_join_ranks_above_every_session_held_and_evicts_the_oldest_when_full() {
        let games = [(4u32, 1i64), (2, 1), (7, 1)];
        assert_eq!(next_join::<i64, _>(&games), 8);
        assert_eq!(next_join::<i64, (u32, i64)>([]), 0);
        assert_eq!(evicted_by_join::<i64, _, _>(&games, 4), None);
        assert_eq!(evicted_by_join::<i64, _, _>(&games, 3), Some(1));
    }

    #[test]
    fn a_game_place_is_derived_as_a_heartbeat_derives_it() {
        let catalog = PlaceCatalog::new(&[crate::config::PlaceSettings {
            id: 1818,
            universe_id: 13058,
            root_place_id: 1800,
            name: "Classic: Crossroads".into(),
        }]);
        let known = GamePlace::new(1818, None, &catalog).unwrap();
        assert_eq!(known.location.as_str(), "Classic: Crossroads");
        assert_eq!(known.place.root_place_id, 1800);
        assert_eq!(known.place.universe_id, NonZeroI64::new(13058));
        let overridden = GamePlace::new(1818, Some(9), &catalog).unwrap();
        assert_eq!(overridden.place.universe_id, NonZeroI64::new(9));
        let unknown = GamePlace::new(77, None, &catalog).unwrap();
        assert_eq!(unknown.location.as_str(), "Playing");
        assert_eq!(
            (unknown.place.root_place_id, unknown.place.universe_id),
            (77, None)
        );
        assert_eq!(GamePlace::new(0, None, &catalog), None);
    }

    #[test]
    fn without_client_games_a_heartbeat_keeps_only_studio_places() {
        let game = AppReport {
            place_id: Some(1818),
            game_id: Some(uuid::Uuid::nil()),
            universe_id: Some(3),
            location: Some("Lobby"),
            ..Default::default()
        };
        let stripped = game.clone().without_games();
        assert_eq!(
            (stripped.place_id, stripped.game_id, stripped.universe_id),
            (None, None, None)
        );
        assert_eq!(stripped.location, Some("Lobby"));
        let studio = AppReport {
            location: Some("studio"),
            ..game
        };
        assert_eq!(studio.clone().without_games(), studio);
    }
}

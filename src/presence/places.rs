//! The place catalog: `placeId -> universe, root place, name`, read from `[[places]]`.

use std::collections::HashMap;

use super::memory::location::Location;
use crate::config::PlaceSettings;

/// One known place. Names are shared by every user who is there.
#[derive(Debug, Clone)]
pub struct Place {
    pub universe_id: i64,
    pub root_place_id: i64,
    pub name: Location,
    /// `Studio - <name>`, built once.
    pub studio_location: Location,
}

/// Immutable after start-up, so readers need no lock.
#[derive(Debug, Clone, Default)]
pub struct PlaceCatalog {
    places: HashMap<i64, Place>,
}

impl PlaceCatalog {
    pub fn new(settings: &[PlaceSettings]) -> Self {
        let places = settings
            .iter()
            .map(|p| {
                let place = Place {
                    universe_id: p.universe_id,
                    root_place_id: p.root_place_id,
                    name: Location::new(&p.name),
                    studio_location: Location::new(&format!("Studio - {}", p.name)),
                };
                (p.id, place)
            })
            .collect();
        Self { places }
    }

    pub fn get(&self, place_id: i64) -> Option<&Place> {
        self.places.get(&place_id)
    }

    pub fn len(&self) -> usize {
        self.places.len()
    }

    pub fn is_empty(&self) -> bool {
        self.places.is_empty()
    }
}

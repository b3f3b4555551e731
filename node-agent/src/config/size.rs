//! Byte sizes in the agent's config file: an integer (bytes) or a human string parsed by
//! [`hearth_sdk::size::parse`].

use hearth_sdk::size::parse as parse_size;
use serde::{Deserialize, Deserializer, de};

/// Deserializes a size given either as an integer (bytes) or as a human string.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Human(String),
    }
    match Size::deserialize(deserializer)? {
        Size::Bytes(n) => Ok(n),
        Size::Human(s) => parse_size(&s).map_err(de::Error::custom),
    }
}

//! `[kafka.properties]`: librdkafka settings passed to every Kafka client Jetstream makes
//! (consumer, lag client, producers), for what a managed Kafka needs — `security.protocol`,
//! `sasl.mechanisms`, `sasl.username`, `sasl.password`, `ssl.ca.location`, … Each may also come
//! from a `JETSTREAM_KAFKA_<PROPERTY>` environment variable (`JETSTREAM_KAFKA_SASL_PASSWORD` →
//! `sasl.password`), which wins over the file: secrets belong in the environment.
//!
//! Secret values never print: `Debug` and [`KafkaProperties::masked`] show `***` for them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// The environment variables' prefix.
pub const ENV_PREFIX: &str = "JETSTREAM_KAFKA_";

/// `JETSTREAM_KAFKA_*` variables that are Jetstream's own settings (flags), not properties.
const OWN_VARIABLES: [&str; 3] = ["BROKERS", "TOPIC", "GROUP"];

/// Properties that Jetstream sets itself and a file must not override: the brokers and group
/// have their own settings, and the rest would break how offsets are stored with the rollups.
const RESERVED: [&str; 7] = [
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "partition.assignment.strategy",
];

#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct KafkaProperties(pub BTreeMap<String, String>);

/// Does this property hold a secret (a password, a private key, a token)?
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password") || k.contains("secret") || k == "ssl.key.pem" || k == "sasl.oauthbearer.config"
}

impl KafkaProperties {
    /// Adds the `JETSTREAM_KAFKA_<PROPERTY>` variables among `vars` (they win over the file).
    pub fn merge_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
            if rest.is_empty() || OWN_VARIABLES.contains(&rest) {
                continue;
            }
            self.0.insert(rest.to_ascii_lowercase().replace('_', "."), value);
        }
    }

    /// Problems with the properties (reserved keys), for `Settings::check`.
    pub fn problems(&self) -> Vec<String> {
        self.0
            .keys()
            .filter(|k| RESERVED.contains(&k.as_str()))
            .map(|k| {
                format!(
                    "kafka.properties.\"{k}\" is set by Jetstream itself (use kafka.brokers / kafka.group for \
                     the brokers and group)"
                )
            })
            .collect()
    }

    /// The properties with secret values masked, for display.
    pub fn masked(&self) -> BTreeMap<String, String> {
        self.0.iter().map(|(k, v)| (k.clone(), if is_secret(k) { "***".to_string() } else { v.clone() })).collect()
    }
}

/// Serialised masked: what is serialised is shown (`jetstream config show`).
impl Serialize for KafkaProperties {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.masked().serialize(s)
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.masked()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_variables_become_properties_and_win_over_the_file() {
        let mut p = KafkaProperties(BTreeMap::from([("sasl.password".to_string(), "from-file".to_string())]));
        p.merge_env([
            ("JETSTREAM_KAFKA_SASL_PASSWORD".to_string(), "from-env".to_string()),
            ("JETSTREAM_KAFKA_SECURITY_PROTOCOL".to_string(), "SASL_SSL".to_string()),
            ("JETSTREAM_KAFKA_BROKERS".to_string(), "b:9092".to_string()),
            ("JETSTREAM_STORE".to_string(), "sqlite://x".to_string()),
        ]);
        assert_eq!(p.0.get("sasl.password").map(String::as_str), Some("from-env"));
        assert_eq!(p.0.get("security.protocol").map(String::as_str), Some("SASL_SSL"));
        assert_eq!(p.0.len(), 2, "{p:?}");
    }

    #[test]
    fn secrets_are_masked_when_shown() {
        let p = KafkaProperties(BTreeMap::from([
            ("sasl.password".to_string(), "hunter2".to_string()),
            ("sasl.username".to_string(), "app".to_string()),
        ]));
        let shown = format!("{p:?}");
        assert!(!shown.contains("hunter2") && shown.contains("app"), "{shown}");
    }

    #[test]
    fn jetstreams_own_properties_are_refused() {
        let p = KafkaProperties(BTreeMap::from([("group.id".to_string(), "x".to_string())]));
        assert!(p.problems()[0].contains("group.id"), "{:?}", p.problems());
    }
}

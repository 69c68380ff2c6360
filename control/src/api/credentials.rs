//! AWS shared-credentials files: the key pairs the API accepts, and the one
//! `apply` signs with.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand::distr::{Alphanumeric, SampleString};

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: line {line}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: no profile has both aws_access_key_id and aws_secret_access_key")]
    Empty { path: PathBuf },
    #[error("{set} is set but {missing} is not: give both, or neither")]
    HalfEnvironment {
        set: &'static str,
        missing: &'static str,
    },
}

/// The environment variables a key pair can come from, as in the AWS CLI.
pub const ENV_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const ENV_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";

#[derive(Debug, Clone)]
pub struct KeyPair {
    pub profile: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

#[derive(Debug, Clone)]
pub struct Credentials {
    pairs: Vec<KeyPair>,
}

impl Credentials {
    pub fn parse(path: &Path, text: &str) -> Result<Credentials, CredentialsError> {
        let mut profiles: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        let mut current: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                let name = name.trim().to_string();
                if !profiles.contains_key(&name) {
                    order.push(name.clone());
                }
                profiles.entry(name.clone()).or_default();
                current = Some(name);
                continue;
            }
            let syntax = |message: &str| CredentialsError::Syntax {
                path: path.to_path_buf(),
                line: i + 1,
                message: message.to_string(),
            };
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| syntax("expected `key = value` or `[profile]`"))?;
            let profile = current
                .as_ref()
                .ok_or_else(|| syntax("setting outside of a [profile] section"))?;
            profiles
                .entry(profile.clone())
                .or_default()
                .insert(k.trim().to_string(), v.trim().to_string());
        }
        let pairs: Vec<KeyPair> = order
            .iter()
            .filter_map(|name| {
                let p = profiles.get(name)?;
                Some(KeyPair {
                    profile: name.clone(),
                    access_key_id: p.get("aws_access_key_id")?.clone(),
                    secret_access_key: p.get("aws_secret_access_key")?.clone(),
                })
            })
            .collect();
        if pairs.is_empty() {
            return Err(CredentialsError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Credentials { pairs })
    }

    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Credentials::parse(path, &text)
    }

    /// Loads `path`, first writing a fresh random key pair there (mode 0600)
    /// if it does not exist; returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Credentials, bool), CredentialsError> {
        let io = |source| CredentialsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut rng = rand::rng();
        let key_id = format!(
            "AKIA{}",
            Alphanumeric.sample_string(&mut rng, 16).to_uppercase()
        );
        let secret = Alphanumeric.sample_string(&mut rng, 40);
        let text = format!(
            "# Created by trellis-control. Every key pair here may call the API.\n\
             [default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"
        );
        let created = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut f) => {
                f.write_all(text.as_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io(e)),
        };
        Ok((Credentials::load(path)?, created))
    }

    /// The key pair in `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`
    /// (read through `var`), as profile `environment`; `None` when neither
    /// is set. An empty variable counts as unset, as in the AWS SDKs.
    pub fn from_env(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Credentials>, CredentialsError> {
        let get = |name| var(name).filter(|v| !v.is_empty());
        match (get(ENV_ACCESS_KEY_ID), get(ENV_SECRET_ACCESS_KEY)) {
            (Some(access_key_id), Some(secret_access_key)) => Ok(Some(Credentials {
                pairs: vec![KeyPair {
                    profile: "environment".into(),
                    access_key_id,
                    secret_access_key,
                }],
            })),
            (None, None) => Ok(None),
            (Some(_), None) => Err(CredentialsError::HalfEnvironment {
                set: ENV_ACCESS_KEY_ID,
                missing: ENV_SECRET_ACCESS_KEY,
            }),
            (None, Some(_)) => Err(CredentialsError::HalfEnvironment {
                set: ENV_SECRET_ACCESS_KEY,
                missing: ENV_ACCESS_KEY_ID,
            }),
        }
    }

    pub fn secret_for(&self, access_key_id: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|p| p.access_key_id == access_key_id)
            .map(|p| p.secret_access_key.as_str())
    }

    /// The `default` profile if present, else the first one.
    pub fn preferred(&self) -> &KeyPair {
        self.pairs
            .iter()
            .find(|p| p.profile == "default")
            .unwrap_or(&self.pairs[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_profiles_and_rejects_junk() {
        let p = Path::new("creds");
        let c = Credentials::parse(
            p,
            "# c\n[a]\naws_access_key_id = A\naws_secret_access_key = s1\n[default]\naws_access_key_id=B\naws_secret_access_key=s2\n",
        )
        .unwrap();
        assert_eq!(c.secret_for("A"), Some("s1"));
        assert_eq!(c.preferred().access_key_id, "B");
        assert!(Credentials::parse(p, "[a]\nregion = x\n").is_err());
        assert!(Credentials::parse(p, "junk\n").is_err());
    }

    #[test]
    fn reads_a_key_pair_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let both = Credentials::from_env(env(&[
            (ENV_ACCESS_KEY_ID, "AKIAENV"),
            (ENV_SECRET_ACCESS_KEY, "s"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(both.secret_for("AKIAENV"), Some("s"));
        assert!(Credentials::from_env(env(&[])).unwrap().is_none());
        assert!(Credentials::from_env(env(&[
            (ENV_ACCESS_KEY_ID, ""),
            (ENV_SECRET_ACCESS_KEY, "")
        ]))
        .unwrap()
        .is_none());
        let half = Credentials::from_env(env(&[(ENV_ACCESS_KEY_ID, "AKIAENV")])).unwrap_err();
        assert!(half.to_string().contains(ENV_SECRET_ACCESS_KEY), "{half}");
    }

    #[test]
    fn creates_a_private_file_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        let (first, created) = Credentials::load_or_create(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (second, created) = Credentials::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(
            first.preferred().secret_access_key,
            second.preferred().secret_access_key
        );
    }
}

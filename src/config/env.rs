//! Reading settings: the lookup of a name, and the parsers every setting
//! shares, each failing with a message that names what was expected.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::list::{self, Kind, Setting};
use super::{ConfigError, LimitSettings};
use crate::policy::{parse_window, MAX_LIMIT_TIMES_WINDOW_MS};

/// The lookup function plus the parsing helpers every setting shares. Every
/// name read must be in [`super::list::SETTINGS`], which gives its default,
/// bounds and choices.
pub(super) struct Env<'a>(pub(super) &'a dyn Fn(&str) -> Option<String>);

/// The declaration of `name`; reading an undeclared setting is a bug that
/// every test run would meet.
fn declared(name: &str) -> &'static Setting {
    list::find(name)
        .unwrap_or_else(|| panic!("setting {name} is not declared in config::list::SETTINGS"))
}

impl Env<'_> {
    /// The value given for `name` (trimmed; empty means unset).
    pub(super) fn get(&self, name: &'static str) -> Option<String> {
        declared(name);
        (self.0)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// The value given, else the declared default (None when it has none).
    pub(super) fn value(&self, name: &'static str) -> Option<String> {
        self.get(name).or_else(|| {
            let default = declared(name).default;
            (!default.is_empty()).then(|| default.to_owned())
        })
    }

    /// The value given or the declared default, which always parses (a
    /// test reads every default).
    pub(super) fn parse<T>(
        &self,
        name: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let given = self.get(name);
        match given {
            Some(value) => parse(&value).map_err(|problem| ConfigError::new(name, &value, problem)),
            None => {
                let default = declared(name).default;
                assert!(
                    !default.is_empty(),
                    "setting {name} is declared without a default"
                );
                Ok(parse(default)
                    .unwrap_or_else(|p| panic!("the default of {name} does not parse: {p}")))
            }
        }
    }

    /// A setting without a default: None when not given.
    pub(super) fn optional<T>(
        &self,
        name: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(value) => parse(&value)
                .map(Some)
                .map_err(|problem| ConfigError::new(name, &value, problem)),
        }
    }

    /// A `Bool` setting.
    pub(super) fn bool(&self, name: &'static str) -> Result<bool, ConfigError> {
        self.parse(name, parse_bool)
    }

    /// An `Integer` setting within its declared bounds.
    pub(super) fn integer(&self, name: &'static str) -> Result<u64, ConfigError> {
        let (min, max) = bounds(name);
        self.parse(name, |v| bounded_integer(v, min, max))
    }

    /// An `Integer` setting without a default.
    pub(super) fn optional_integer(&self, name: &'static str) -> Result<Option<u64>, ConfigError> {
        let (min, max) = bounds(name);
        self.optional(name, |v| bounded_integer(v, min, max))
    }

    /// A `Millis` setting within its declared bounds.
    pub(super) fn millis(&self, name: &'static str) -> Result<Duration, ConfigError> {
        let (min, max) = bounds(name);
        self.parse(name, |v| {
            bounded_integer(v, min, max).map(Duration::from_millis)
        })
    }

    /// A `Choice` setting: the declared word it names (in any case).
    pub(super) fn choice(&self, name: &'static str) -> Result<Option<&'static str>, ConfigError> {
        let Kind::Choice(words) = declared(name).kind else {
            panic!("setting {name} is not declared as a choice");
        };
        let pick = |v: &str| {
            words
                .iter()
                .copied()
                .find(|w| w.eq_ignore_ascii_case(v))
                .ok_or_else(|| format!("expected one of {}", words.join(", ")))
        };
        match self.get(name) {
            Some(value) => pick(&value)
                .map(Some)
                .map_err(|problem| ConfigError::new(name, &value, problem)),
            None => Ok(words.iter().copied().find(|w| *w == declared(name).default)),
        }
    }
}

fn bounds(name: &str) -> (u64, u64) {
    match declared(name).kind {
        Kind::Integer { min, max } | Kind::Millis { min, max } => (min, max),
        kind => panic!("setting {name} is declared as {kind:?}, not a number"),
    }
}

/// A path to a file that exists.
pub(super) fn existing_file(value: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    if path.is_file() {
        Ok(path)
    } else {
        Err("no such file".into())
    }
}

pub(super) fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

pub(super) fn bounded_integer(value: &str, min: u64, max: u64) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from {min} to {max}")),
    }
}

pub(super) fn limit_settings(
    env: &Env<'_>,
    limit_name: &'static str,
    window_name: &'static str,
) -> Result<LimitSettings, ConfigError> {
    let limit = env.parse(limit_name, |v| match v.parse::<u32>() {
        Ok(n) => NonZeroU32::new(n).ok_or_else(|| "a limit must be at least 1".to_owned()),
        Err(_) => Err("expected a whole number from 1 to 4294967295".into()),
    })?;
    let window = env.parse(window_name, parse_window)?;
    if u128::from(limit.get()) * window.as_millis() >= MAX_LIMIT_TIMES_WINDOW_MS {
        return Err(ConfigError::new(
            window_name,
            &env.get(window_name).unwrap_or_default(),
            format!("limit × window in ms must stay below 2^53 (the limit is {limit})"),
        ));
    }
    Ok(LimitSettings { limit, window })
}

pub(super) fn parse_networks(value: &str) -> Result<Vec<IpNet>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!("`{item}` is not an IP address or network (e.g. 10.0.0.1, 10.0.0.0/8)")
                })
        })
        .collect()
}

pub(super) fn is_hostname(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `host:port,host:port,...` (IPv6 as `[::1]:26379`).
pub(super) fn parse_addresses(value: &str) -> Result<Vec<(String, u16)>, String> {
    let addresses: Vec<(String, u16)> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (host, port) = item
                .rsplit_once(':')
                .ok_or_else(|| format!("`{item}` is not host:port"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port =
                bounded_integer(port, 1, 65535).map_err(|_| format!("`{item}`: bad port"))?;
            if host.parse::<IpAddr>().is_err() && !is_hostname(host) {
                return Err(format!("`{item}`: bad host"));
            }
            Ok((host.to_owned(), port as u16))
        })
        .collect::<Result<_, String>>()?;
    if addresses.is_empty() {
        return Err("expected host:port[,host:port...]".into());
    }
    Ok(addresses)
}

/// An IP address or a host name.
pub(super) fn host(v: &str) -> Result<String, String> {
    if v.parse::<IpAddr>().is_ok() || is_hostname(v) {
        Ok(v.to_owned())
    } else {
        Err("expected an IP address or a host name".into())
    }
}

/// A port to listen on; 0 picks a free one.
pub(super) fn port(v: &str) -> Result<u16, String> {
    bounded_integer(v, 0, 65535).map(|n| n as u16)
}

/// A number from 0 to 1.
pub(super) fn ratio(v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| "expected a number from 0 to 1".to_owned())
}

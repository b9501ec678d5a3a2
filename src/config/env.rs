//! Reading settings: the lookup of a name, and the parsers every setting
//! shares, each failing with a message that names what was expected.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::{ConfigError, LimitSettings};
use crate::policy::{parse_window, MAX_LIMIT_TIMES_WINDOW_MS};

/// The lookup function plus the parsing helpers every setting shares.
pub(super) struct Env<'a>(pub(super) &'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    pub(super) fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    pub(super) fn parse_with<T>(
        &self,
        name: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(value) => parse(&value).map_err(|problem| ConfigError::new(name, &value, problem)),
        }
    }
}

/// A path to a file that exists.
pub(super) fn existing_file(value: &str) -> Result<Option<PathBuf>, String> {
    let path = PathBuf::from(value);
    if path.is_file() {
        Ok(Some(path))
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
    let limit = env.parse_with(
        limit_name,
        NonZeroU32::new(20).expect("20 > 0"),
        |v| match v.parse::<u32>() {
            Ok(n) => NonZeroU32::new(n).ok_or_else(|| "a limit must be at least 1".to_owned()),
            Err(_) => Err("expected a whole number from 1 to 4294967295".into()),
        },
    )?;
    let window = env.parse_with(window_name, Duration::from_secs(60), parse_window)?;
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

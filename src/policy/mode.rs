//! How a policy counts (the algorithms, one Lua module each) and what a
//! request gets when the store cannot answer (the failure modes).

use std::fmt;
use std::str::FromStr;

/// What a request gets when Redis cannot answer within the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Allow the request and mark the response as degraded.
    Open,
    /// Refuse the request with 503.
    Closed,
    /// Keep approximate limits in this process until Redis returns.
    Local,
}

impl FailureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::Open => "open",
            FailureMode::Closed => "closed",
            FailureMode::Local => "local",
        }
    }
}

impl FailureMode {
    /// How much of the limit a mode keeps while the store cannot answer:
    /// `closed` (refuse) over `local` (approximate) over `open` (allow). A
    /// request whose policies ask for different modes gets the strictest.
    pub fn strictness(self) -> u8 {
        match self {
            FailureMode::Open => 0,
            FailureMode::Local => 1,
            FailureMode::Closed => 2,
        }
    }
}

impl FromStr for FailureMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "open" => Ok(FailureMode::Open),
            "closed" => Ok(FailureMode::Closed),
            "local" => Ok(FailureMode::Local),
            _ => Err("expected `open`, `closed` or `local`".into()),
        }
    }
}

impl fmt::Display for FailureMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The algorithm a policy counts with. Each has one Lua module in `lua/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    FixedWindow,
    SlidingWindow,
    TokenBucket,
    Gcra,
    /// Not a rate: at most `limit` requests in flight at once, each
    /// holding a lease for `window` (the lease's time-to-live).
    Concurrency,
}

impl Algorithm {
    /// The rate algorithms (every kind but [`Algorithm::Concurrency`]).
    pub const ALL: [Algorithm; 4] = [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket,
        Algorithm::Gcra,
    ];

    /// The name used in settings, rules files and the Lua module table.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::Gcra => "gcra",
            Algorithm::Concurrency => "concurrency",
        }
    }

    /// Whether it limits requests in flight rather than a rate.
    pub fn is_concurrency(self) -> bool {
        self == Algorithm::Concurrency
    }
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .chain([Algorithm::Concurrency])
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                "expected one of fixed_window, sliding_window, token_bucket, gcra, concurrency"
                    .to_owned()
            })
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

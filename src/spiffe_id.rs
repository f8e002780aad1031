//! SPIFFE IDs and trust domains, parsed and checked against the SPIFFE ID spec.
//!
//! Owns the one definition of a well-formed ID (lowercase trust domain, no query or
//! fragment, no empty or dot segments, at most 2048 bytes). It must never accept an ID
//! that another room would have to re-check.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

const SCHEME: &str = "spiffe://";
const MAX_LEN: usize = 2048;

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("a SPIFFE ID must start with spiffe://")]
    Scheme,
    #[error("a SPIFFE ID is at most {MAX_LEN} bytes")]
    TooLong,
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    #[error("the trust domain may hold only lowercase letters, digits, '.', '-' and '_'")]
    TrustDomainChars,
    #[error("a SPIFFE ID has no query or fragment")]
    QueryOrFragment,
    #[error("a SPIFFE ID has no userinfo or port")]
    UserInfoOrPort,
    #[error("path segments may not be empty, '.' or '..'")]
    BadSegment,
    #[error("path segments may hold only letters, digits, '.', '-' and '_'")]
    PathChars,
}

/// A trust domain name such as `example.org`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(Arc<str>);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`) or a `spiffe://example.org` form.
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        let name = name.strip_prefix(SCHEME).unwrap_or(name);
        check_trust_domain(name)?;
        Ok(Self(name.into()))
    }

    /// The trust domain name, without scheme.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A well-formed SPIFFE ID, `spiffe://<trust domain>[/<segment>...]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: Arc<str>,
    td_end: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn parse(uri: &str) -> Result<Self, SpiffeIdError> {
        if uri.len() > MAX_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = uri.strip_prefix(SCHEME).ok_or(SpiffeIdError::Scheme)?;
        if rest.contains(['?', '#']) {
            return Err(SpiffeIdError::QueryOrFragment);
        }
        let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if td.contains(['@', ':']) {
            return Err(SpiffeIdError::UserInfoOrPort);
        }
        check_trust_domain(td)?;
        if !path.is_empty() {
            for segment in path[1..].split('/') {
                check_segment(segment)?;
            }
        }
        Ok(Self {
            uri: uri.into(),
            td_end: SCHEME.len() + td.len(),
        })
    }

    /// The trust domain name.
    pub fn trust_domain_name(&self) -> &str {
        &self.uri[SCHEME.len()..self.td_end]
    }

    /// The trust domain as an owned value.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().into())
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.uri[self.td_end..]
    }

    /// The path segments (none for a bare trust domain ID).
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        let path = self.path();
        path.get(1..)
            .unwrap_or("")
            .split('/')
            .filter(|s| !s.is_empty())
    }

    /// The whole URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The whole URI, sharing this ID's text instead of copying it.
    pub fn to_shared_str(&self) -> Arc<str> {
        Arc::clone(&self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

fn check_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(SpiffeIdError::TrustDomainChars);
    }
    Ok(())
}

fn check_segment(segment: &str) -> Result<(), SpiffeIdError> {
    if segment.is_empty() || segment == "." || segment == ".." {
        return Err(SpiffeIdError::BadSegment);
    }
    if !segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(SpiffeIdError::PathChars);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_well_formed_ids() {
        let id = SpiffeId::parse("spiffe://example.org/ns/billing/sa/api").unwrap();
        assert_eq!(id.trust_domain_name(), "example.org");
        assert_eq!(id.path(), "/ns/billing/sa/api");
        assert_eq!(
            id.segments().collect::<Vec<_>>(),
            ["ns", "billing", "sa", "api"]
        );
        let bare = SpiffeId::parse("spiffe://example.org").unwrap();
        assert_eq!(bare.segments().count(), 0);
    }

    #[test]
    fn refuses_malformed_ids() {
        let cases = [
            ("http://example.org/a", SpiffeIdError::Scheme),
            ("spiffe://Example.org/a", SpiffeIdError::TrustDomainChars),
            ("spiffe:///a", SpiffeIdError::EmptyTrustDomain),
            ("spiffe://example.org/a?x=1", SpiffeIdError::QueryOrFragment),
            ("spiffe://example.org/a#f", SpiffeIdError::QueryOrFragment),
            ("spiffe://example.org/a//b", SpiffeIdError::BadSegment),
            ("spiffe://example.org/a/./b", SpiffeIdError::BadSegment),
            ("spiffe://example.org/a/../b", SpiffeIdError::BadSegment),
            ("spiffe://example.org/a/", SpiffeIdError::BadSegment),
            ("spiffe://example.org:443/a", SpiffeIdError::UserInfoOrPort),
            ("spiffe://u@example.org/a", SpiffeIdError::UserInfoOrPort),
            ("spiffe://example.org/a%20b", SpiffeIdError::PathChars),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input), Err(want), "{input}");
        }
        let long = format!("spiffe://example.org/{}", "a".repeat(2100));
        assert_eq!(SpiffeId::parse(&long), Err(SpiffeIdError::TooLong));
    }
}

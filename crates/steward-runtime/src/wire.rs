//! Conversions between Steward's domain types and their protobuf forms, shared by every service.

use chrono::{DateTime, TimeZone, Utc};

use crate::claims::Role;
use crate::error::{ApiError, ApiResult};

/// The protobuf form of a time.
pub fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A time from its protobuf form, or INVALID_ARGUMENT naming `field`.
pub fn from_timestamp(field: &str, ts: &prost_types::Timestamp) -> ApiResult<DateTime<Utc>> {
    u32::try_from(ts.nanos)
        .ok()
        .and_then(|nanos| Utc.timestamp_opt(ts.seconds, nanos).single())
        .ok_or_else(|| ApiError::invalid(field, "is not a valid timestamp"))
}

impl Role {
    /// The role of a `steward.admin.v1.Role` value; `None` for unspecified or unknown values.
    pub fn from_proto(value: i32) -> Option<Self> {
        use steward_proto::admin::v1::Role as Proto;
        match Proto::try_from(value) {
            Ok(Proto::Administrator) => Some(Self::Administrator),
            Ok(Proto::Manager) => Some(Self::Manager),
            Ok(Proto::HelpDesk) => Some(Self::HelpDesk),
            Ok(Proto::ReadOnly) => Some(Self::ReadOnly),
            Ok(Proto::CommandRunner) => Some(Self::CommandRunner),
            Ok(Proto::Custom) => Some(Self::Custom),
            Ok(Proto::Unspecified) | Err(_) => None,
        }
    }

    /// The `steward.admin.v1.Role` value.
    pub fn to_proto(self) -> i32 {
        use steward_proto::admin::v1::Role as Proto;
        match self {
            Self::Administrator => Proto::Administrator as i32,
            Self::Manager => Proto::Manager as i32,
            Self::HelpDesk => Proto::HelpDesk as i32,
            Self::ReadOnly => Proto::ReadOnly as i32,
            Self::CommandRunner => Proto::CommandRunner as i32,
            Self::Custom => Proto::Custom as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_roles_round_trip() {
        let now = Utc.timestamp_opt(1_800_000_000, 123_456_789).single().unwrap();
        assert_eq!(from_timestamp("t", &timestamp(now)).unwrap(), now);
        let bad = prost_types::Timestamp { seconds: 0, nanos: -1 };
        assert!(from_timestamp("t", &bad).is_err());
        for role in Role::ALL {
            assert_eq!(Role::from_proto(role.to_proto()), Some(role));
        }
        assert_eq!(Role::from_proto(0), None);
    }
}

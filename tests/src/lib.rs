//! Shared test helpers live in the e2e test binary.

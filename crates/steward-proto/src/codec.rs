//! The codec of every generated client and server: prost's, except that a message that does
//! not decode (invalid UTF-8 in a string field, a truncated varint, a wrong wire type) is
//! `INVALID_ARGUMENT` with a `google.rpc.BadRequest` naming the field path prost reports, not
//! the `INTERNAL` of `tonic_prost::ProstCodec`: a request the client mangled is the client's
//! error, and `INTERNAL` would count it as a server fault in every error-rate alert.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, DecodeBuf};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};
use tonic_types::{ErrorDetails, StatusExt};

/// `google.rpc.ErrorInfo.domain` of every Steward error (also `steward_runtime::ERROR_DOMAIN`).
pub const ERROR_DOMAIN: &str = "steward.dev";

/// The request field a decoding failure is reported on: the message as a whole (prost's text,
/// in the violation's description, names the nested field).
pub const UNDECODABLE_FIELD: &str = "request";

/// Prost's codec with decoding failures mapped to `INVALID_ARGUMENT` ([`invalid_message`]).
#[derive(Debug, Clone)]
pub struct Codec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self { _types: PhantomData }
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder { inner: ProstCodec::<T, U>::default().decoder() }
    }
}

/// The decoder of [`Codec`].
#[derive(Debug, Clone)]
pub struct Decoder<U> {
    inner: ProstDecoder<U>,
}

impl<U: prost::Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.inner.decode(buf).map_err(|status| invalid_message(status.message()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}

/// The answer to a message that does not decode: `INVALID_ARGUMENT`, with an `ErrorInfo`
/// (`INVALID_ARGUMENT`, [`ERROR_DOMAIN`]) and a `BadRequest` on [`UNDECODABLE_FIELD`] whose
/// description is prost's reason (`Hello.agent_version: invalid string value: data is not
/// UTF-8 encoded`), as `steward_runtime::ApiError::InvalidArgument` answers.
pub fn invalid_message(reason: &str) -> Status {
    let description = format!("is not a valid protobuf message of this RPC: {reason}");
    let mut details = ErrorDetails::new();
    details.set_error_info("INVALID_ARGUMENT", ERROR_DOMAIN, std::collections::HashMap::new());
    details.add_bad_request_violation(UNDECODABLE_FIELD, description.clone());
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid argument: {UNDECODABLE_FIELD}: {description}"),
        details,
    )
}

//! Who is on the other end of a call: the client address (through trusted proxies only) and the
//! TLS client certificate, read from the connection information tonic attaches to each request.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::config::ForwardedHeader;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// The TCP peer of a request, over plaintext or TLS.
pub fn tcp_peer(extensions: &http::Extensions) -> Option<SocketAddr> {
    extensions.get::<TcpConnectInfo>().and_then(TcpConnectInfo::remote_addr).or_else(|| {
        extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.get_ref().remote_addr())
    })
}

/// Whether the caller presented a TLS client certificate (already verified against
/// `server.tls.client_ca_file` by the handshake; without that setting none is requested).
pub fn has_client_certificate(extensions: &http::Extensions) -> bool {
    extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
        .is_some_and(|certs| !certs.is_empty())
}

/// The client's address: the TCP peer, unless that peer is one of `trusted_proxies`; then the
/// nearest address in `header` (the one the proxies maintain) that is not itself a trusted proxy,
/// read from the right, since only the hops the trusted proxies appended can be believed. A
/// client cannot forge its address by sending the header through a proxy that appends to it, by
/// sending the other forwarding header (never read), nor by sending either directly.
pub fn client_address(
    peer: Option<SocketAddr>,
    headers: &http::HeaderMap,
    trusted_proxies: &[IpNet],
    header: ForwardedHeader,
) -> String {
    let Some(peer) = peer else { return String::new() };
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(&canonical(*ip)));
    if !trusted(&peer.ip()) {
        return peer.to_string();
    }
    let hops = match header {
        ForwardedHeader::XForwardedFor => x_forwarded_for(headers),
        ForwardedHeader::Forwarded => forwarded_for(headers),
    };
    // Right to left: the first hop that is not a trusted proxy is the client. An unparsable hop
    // ends the walk (a proxy we trust would not have written it), attributing the call to the
    // last trusted hop.
    let mut client = peer.ip();
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) if trusted(ip) => client = *ip,
            Some(ip) => return canonical(*ip).to_string(),
            None => break,
        }
    }
    canonical(client).to_string()
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_canonical(),
        v4 => v4,
    }
}

/// `for=` values of every `Forwarded` header, in order; `None` for obfuscated or invalid nodes.
fn forwarded_for(headers: &http::HeaderMap) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all(http::header::FORWARDED) {
        let Ok(value) = value.to_str() else {
            hops.push(None);
            continue;
        };
        for element in value.split(',') {
            let node = element.split(';').find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                name.trim().eq_ignore_ascii_case("for").then(|| value.trim().trim_matches('"'))
            });
            if let Some(node) = node {
                hops.push(parse_node(node));
            }
        }
    }
    hops
}

/// Every address of every `X-Forwarded-For` header, in order.
fn x_forwarded_for(headers: &http::HeaderMap) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        match value.to_str() {
            Ok(value) => hops.extend(value.split(',').map(|hop| parse_node(hop.trim()))),
            Err(_) => hops.push(None),
        }
    }
    hops
}

/// `192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]` or `[2001:db8::1]:80`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    node.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).and_then(|ip| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    const XFF: ForwardedHeader = ForwardedHeader::XForwardedFor;
    const RFC: ForwardedHeader = ForwardedHeader::Forwarded;

    fn proxies() -> Vec<IpNet> {
        vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]
    }

    #[test]
    fn an_untrusted_peer_cannot_claim_another_address() {
        let peer = "203.0.113.9:5000".parse().ok();
        let forged = headers(&[("x-forwarded-for", "198.51.100.1"), ("forwarded", "for=1.2.3.4")]);
        assert_eq!(client_address(peer, &forged, &proxies(), XFF), "203.0.113.9:5000");
        assert_eq!(client_address(peer, &forged, &[], XFF), "203.0.113.9:5000");
    }

    #[test]
    fn a_trusted_proxy_names_the_client_and_appended_hops_are_believed_from_the_right() {
        let peer = "10.1.2.3:443".parse().ok();
        // The client sent a forged first hop; the ingress appended the real one.
        let xff = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.7, 10.9.9.9")]);
        assert_eq!(client_address(peer, &xff, &proxies(), XFF), "198.51.100.7");
        let forwarded =
            headers(&[("forwarded", "for=1.1.1.1, for=\"[2001:db8::5]:4711\";proto=https")]);
        assert_eq!(client_address(peer, &forwarded, &proxies(), RFC), "2001:db8::5");
        // Only the configured header is read: a client's own other header changes nothing.
        let both = headers(&[("forwarded", "for=192.0.2.60"), ("x-forwarded-for", "192.0.2.61")]);
        assert_eq!(client_address(peer, &both, &proxies(), XFF), "192.0.2.61");
        assert_eq!(client_address(peer, &both, &proxies(), RFC), "192.0.2.60");
        let forged = headers(&[("forwarded", "for=192.0.2.99")]);
        assert_eq!(client_address(peer, &forged, &proxies(), XFF), "10.1.2.3");
        // No header: the proxy itself.
        assert_eq!(client_address(peer, &headers(&[]), &proxies(), XFF), "10.1.2.3");
        // Garbage ends the walk at the last trusted hop.
        let junk = headers(&[("x-forwarded-for", "1.1.1.1, unknown, 10.4.4.4")]);
        assert_eq!(client_address(peer, &junk, &proxies(), XFF), "10.4.4.4");
        let obfuscated = headers(&[("forwarded", "for=_hidden")]);
        assert_eq!(client_address(peer, &obfuscated, &proxies(), RFC), "10.1.2.3");
    }

    #[test]
    fn mapped_ipv4_peers_match_ipv4_proxies() {
        let peer = "[::ffff:10.0.0.1]:443".parse().ok();
        let xff = headers(&[("x-forwarded-for", "192.0.2.1")]);
        assert_eq!(client_address(peer, &xff, &proxies(), XFF), "192.0.2.1");
        assert_eq!(client_address(None, &xff, &proxies(), XFF), "");
    }
}

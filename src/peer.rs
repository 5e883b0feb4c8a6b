//! Who is on the other end of a connection.
//!
//! On the unix socket the kernel tells us (`SO_PEERCRED`). On loopback TCP
//! the client's own socket appears in `/proc/net/tcp` or `/proc/net/tcp6`
//! with its owner's uid; we find the entry whose local address is the
//! client's address and whose remote address is ours. A caller we cannot
//! identify is anonymous.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The transport a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Unix,
    Tcp {
        local: SocketAddr,
        remote: SocketAddr,
    },
}

/// The credentials of a connected client, as far as we could learn them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<i32>,
    pub transport: Transport,
}

impl Peer {
    /// The credentials of a unix-socket client.
    pub fn of_unix(stream: &tokio::net::UnixStream) -> Peer {
        let cred = stream.peer_cred().ok();
        Peer {
            uid: cred.map(|c| c.uid()),
            gid: cred.map(|c| c.gid()),
            pid: cred.and_then(|c| c.pid()),
            transport: Transport::Unix,
        }
    }

    /// A caller nothing is known of.
    pub fn unknown() -> Peer {
        Peer {
            uid: None,
            gid: None,
            pid: None,
            transport: Transport::Unix,
        }
    }

    /// The owner of a loopback TCP client's socket.
    pub fn of_tcp(local: SocketAddr, remote: SocketAddr) -> Peer {
        Peer {
            uid: tcp_owner(local, remote),
            gid: None,
            pid: None,
            transport: Transport::Tcp { local, remote },
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.uid {
            Some(uid) => write!(f, "uid {uid}")?,
            None => write!(f, "anonymous caller")?,
        }
        match self.transport {
            Transport::Unix => write!(f, " on the unix socket"),
            Transport::Tcp { remote, .. } => write!(f, " from {remote}"),
        }
    }
}

/// Finds the uid that owns the client end of a TCP connection from `remote`
/// to our `local` address.
pub fn tcp_owner(local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    if !remote.ip().is_loopback() && !is_mapped_loopback(remote.ip()) {
        return None;
    }
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table)
            && let Some(uid) = find_owner(&text, remote, local)
        {
            return Some(uid);
        }
    }
    None
}

fn is_mapped_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        IpAddr::V4(_) => false,
    }
}

/// Looks in a `/proc/net/tcp{,6}` table for the socket whose local address is
/// `sock_local` and remote address `sock_remote`; returns its uid.
///
/// Only a connected socket that a process still holds counts: its state is
/// ESTABLISHED (`01`) and it has an inode. A client that closed its socket
/// before we accepted the connection leaves a row in FIN_WAIT or TIME_WAIT
/// whose uid the kernel shows as 0, which must not make it root.
fn find_owner(table: &str, sock_local: SocketAddr, sock_remote: SocketAddr) -> Option<u32> {
    let want_local = normalize(sock_local);
    let want_remote = normalize(sock_remote);
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 10 || fields[3] != "01" || fields[9] == "0" {
            continue;
        }
        let (Some(local), Some(remote)) = (parse_addr(fields[1]), parse_addr(fields[2])) else {
            continue;
        };
        if normalize(local) == want_local && normalize(remote) == want_remote {
            return fields[7].parse().ok();
        }
    }
    None
}

/// IPv4-mapped IPv6 addresses compare equal to their IPv4 form: a Java
/// client (Bazel) connects from an IPv6 socket to an IPv4 listener.
fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// Parses `0100007F:C350` (IPv4) or 32 hex digits and a port (IPv6). The
/// kernel prints each 32-bit word of the address in host byte order.
fn parse_addr(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(|w| w.to_ne_bytes());
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(ip)?)),
        32 => {
            let mut octets = [0u8; 16];
            for i in 0..4 {
                octets[i * 4..i * 4 + 4].copy_from_slice(&word(&ip[i * 8..i * 8 + 8])?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two ends of 127.0.0.1:50000 <- 127.0.0.1:40000, as the kernel prints
    // them on a little-endian machine; the client socket belongs to uid 1000.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:C350 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C40 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:C350 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    #[cfg(target_endian = "little")]
    fn finds_the_client_socket_owner() {
        let server: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert_eq!(find_owner(TCP, client, server), Some(1000));
        // The server's own end belongs to uid 0; it must not be confused.
        assert_eq!(find_owner(TCP, server, client), Some(0));
        let other: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert_eq!(find_owner(TCP, other, server), None);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn closed_sockets_are_nobodys() {
        // The client closed its end before accept: FIN_WAIT2 (05) with no
        // inode, shown as uid 0; then TIME_WAIT (06).
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:9C40 0100007F:C350 05 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1
   1: 0100007F:9C40 0100007F:C350 06 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:9C41 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 0 1 0000000000000000 20 4 30 10 -1
";
        let server: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert_eq!(find_owner(table, client, server), None);
        // Established but with no inode: not held by any process.
        let orphan: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert_eq!(find_owner(table, orphan, server), None);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn matches_ipv4_mapped_entries_in_tcp6() {
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100007F:9C40 0000000000000000FFFF00000100007F:C350 01 00000000:00000000 00:00000000 00000000  1234        0 5 1 0000000000000000 20 4 30 10 -1
";
        let server: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert_eq!(find_owner(tcp6, client, server), Some(1234));
    }

    #[test]
    fn real_connection_is_attributed_to_us() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(server).unwrap();
        let (_conn, remote) = listener.accept().unwrap();
        assert_eq!(
            tcp_owner(server, remote),
            Some(nix::unistd::geteuid().as_raw())
        );
    }
}

//! Who is on the other end of a connection.
//!
//! On the unix socket the kernel tells us (`SO_PEERCRED`). On loopback TCP
//! the client's own socket is another socket of this machine, and the
//! kernel knows its owner: we ask `sock_diag` (netlink) for the one socket
//! whose local address is the client's and whose remote address is ours.
//! That answer costs the same however many sockets the machine has.
//! Without `sock_diag` we fall back to reading `/proc/net/tcp` and
//! `/proc/net/tcp6`, which lists every socket: 18 ms a lookup with 800
//! sockets here, and a burst of 200 connections took seconds to admit
//! that way. A caller we cannot identify is anonymous.

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
    match diag_owner(normalize(remote), normalize(local)) {
        Ok(owner) => return owner,
        Err(e) => tracing::debug!("sock_diag: {e}; reading /proc/net/tcp instead"),
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

/// Asks `sock_diag` for the owner of the TCP socket whose local address is
/// `sock_local` and whose remote address is `sock_remote` (both of one
/// family). `Ok(None)` when there is no such socket; `Err` when the kernel
/// cannot answer such questions at all.
fn diag_owner(sock_local: SocketAddr, sock_remote: SocketAddr) -> std::io::Result<Option<u32>> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
        socket,
    };
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    const NLMSG_ERROR: u16 = 2;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    let family = match sock_local {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // struct nlmsghdr, then struct inet_diag_req_v2 (linux/inet_diag.h).
    let mut req = Vec::with_capacity(72);
    req.extend_from_slice(&72u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req.extend_from_slice(&[0; 8]); // seq, pid
    req.extend_from_slice(&[family as u8, libc::IPPROTO_TCP as u8, 0, 0]);
    // ESTABLISHED only: a socket its owner already closed lingers as a
    // FIN_WAIT or TIME_WAIT minisocket that the kernel reports as uid 0.
    req.extend_from_slice(&(1u32 << TCP_ESTABLISHED).to_ne_bytes());
    req.extend_from_slice(&sock_local.port().to_be_bytes());
    req.extend_from_slice(&sock_remote.port().to_be_bytes());
    for addr in [sock_local.ip(), sock_remote.ip()] {
        let mut bytes = [0u8; 16];
        match addr {
            IpAddr::V4(v4) => bytes[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => bytes = v6.octets(),
        }
        req.extend_from_slice(&bytes);
    }
    req.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    req.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    sendto(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &req,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut buf = [0u8; 512];
    let n = recv(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &mut buf,
        MsgFlags::empty(),
    )?;
    parse_diag_reply(&buf[..n], NLMSG_ERROR, SOCK_DIAG_BY_FAMILY)
}

/// `TCP_ESTABLISHED` of linux/tcp_states.h (libc does not export it).
const TCP_ESTABLISHED: u8 = 1;

/// The owner uid in a `sock_diag` reply: a `struct inet_diag_msg` after
/// the netlink header, whose `idiag_uid` is 64 bytes in. An error reply
/// of ENOENT means no such socket.
fn parse_diag_reply(reply: &[u8], error: u16, answer: u16) -> std::io::Result<Option<u32>> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(reply.get(at..at + 4)?.try_into().ok()?))
    };
    let short = || std::io::Error::other("short sock_diag reply");
    let kind = reply
        .get(4..6)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        .ok_or_else(short)?;
    if kind == error {
        let errno = -(u32_at(16).ok_or_else(short)? as i32);
        return match errno {
            libc::ENOENT => Ok(None),
            e => Err(std::io::Error::from_raw_os_error(e)),
        };
    }
    if kind != answer {
        return Err(std::io::Error::other(format!(
            "unexpected sock_diag reply type {kind}"
        )));
    }
    // struct inet_diag_msg: state at 1, uid at 64, inode at 68. A socket no
    // process holds any more (inode 0) is nobody's.
    let state = *reply.get(16 + 1).ok_or_else(short)?;
    let inode = u32_at(16 + 68).ok_or_else(short)?;
    if state != TCP_ESTABLISHED || inode == 0 {
        return Ok(None);
    }
    Ok(Some(u32_at(16 + 64).ok_or_else(short)?))
}

/// Looks in a `/proc/net/tcp{,6}` table for the socket whose local address is
/// `sock_local` and remote address `sock_remote`; returns its uid. Public
/// for the fuzz tests (tests/fuzz.rs): the table is text from the kernel,
/// but this parser must not trust its shape.
///
/// Only a connected socket that a process still holds counts: its state is
/// ESTABLISHED (`01`) and it has an inode. A client that closed its socket
/// before we accepted the connection leaves a row in FIN_WAIT or TIME_WAIT
/// whose uid the kernel shows as 0, which must not make it root.
pub fn find_owner(table: &str, sock_local: SocketAddr, sock_remote: SocketAddr) -> Option<u32> {
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
    fn sock_diag_and_proc_agree_on_a_real_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(server).unwrap();
        let (_conn, remote) = listener.accept().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(diag_owner(remote, server).unwrap(), Some(me));
        let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
        assert_eq!(find_owner(&text, remote, server), Some(me));
        // A socket that does not exist.
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(diag_owner(nobody, server).unwrap(), None);
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

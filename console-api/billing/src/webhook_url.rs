//! Which webhook URLs are acceptable: `http` or `https`, a host, no credentials in the
//! URL, at most 2,000 characters, and never the console itself (a webhook pointed at
//! the console's own API would make it call itself with its own signature).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use url::{Host, Url};

pub const MAX_URL_LENGTH: usize = 2000;

/// Where the console itself can be reached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsoleAddresses {
    /// The addresses the console listens on.
    pub listen: Vec<SocketAddr>,
    /// Its public base URL, when it has one (`https://console.example.com`).
    pub public_url: Option<Url>,
}

fn same_address(ip: IpAddr, port: u16, listen: &SocketAddr) -> bool {
    if port != listen.port() {
        return false;
    }
    if listen.ip().is_unspecified() {
        // Listening on every address: any local address reaches it.
        ip.is_loopback() || ip.is_unspecified() || ip == listen.ip()
    } else {
        ip == listen.ip() || (ip.is_unspecified() && listen.ip().is_loopback())
    }
}

/// The parsed URL, or why it is refused (a message for the tenant).
pub fn validate(text: &str, console: &ConsoleAddresses) -> Result<Url, String> {
    if text.len() > MAX_URL_LENGTH {
        return Err(format!("at most {MAX_URL_LENGTH} characters"));
    }
    let url = Url::parse(text).map_err(|err| format!("not a URL ({err})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the scheme must be http or https, not {:?}",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials do not belong in the URL; the payload is signed instead".into());
    }
    let host = url.host().ok_or("the URL has no host")?;
    let port = url.port_or_known_default().unwrap_or(80);
    let ip = match host {
        Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        Host::Domain(name) if name.eq_ignore_ascii_case("localhost") => {
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        }
        Host::Domain(_) => None,
    };
    let is_console = ip.is_some_and(|ip| console.listen.iter().any(|l| same_address(ip, port, l)))
        || console.public_url.as_ref().is_some_and(|public| {
            public.host_str().map(str::to_ascii_lowercase)
                == url.host_str().map(str::to_ascii_lowercase)
                && public.port_or_known_default() == Some(port)
        });
    if is_console {
        return Err("the URL points at this console itself".into());
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_elsewhere_are_accepted() {
        let console = ConsoleAddresses {
            listen: vec!["0.0.0.0:8080".parse().unwrap()],
            public_url: Some(Url::parse("https://console.example.com").unwrap()),
        };
        assert!(validate("https://hooks.example.com/trellis", &console).is_ok());
        assert!(validate("http://127.0.40.7:9000/hook", &console).is_ok());
        for (bad, why) in [
            ("ftp://example.com/x", "scheme"),
            ("file:///etc/passwd", "scheme"),
            ("javascript:alert(1)", "scheme"),
            ("not a url", "not a URL"),
            ("https://user:pw@example.com/", "credentials"),
            ("http://127.0.0.1:8080/v1/alerts", "console itself"),
            ("http://localhost:8080/", "console itself"),
            ("https://CONSOLE.example.com/hook", "console itself"),
        ] {
            let err = validate(bad, &console).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LENGTH));
        assert!(validate(&long, &console).is_err());
        let specific = ConsoleAddresses {
            listen: vec!["127.0.40.1:8080".parse().unwrap()],
            public_url: None,
        };
        assert!(validate("http://127.0.40.1:8080/", &specific).is_err());
        assert!(validate("http://127.0.40.2:8080/", &specific).is_ok());
    }
}

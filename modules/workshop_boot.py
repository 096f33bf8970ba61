# workshop_boot: boot.py on a workshop board is `import workshop_boot`. It reads /workshop.json
# and starts the services listed under "start" (SERVICES, in that order of need): Wi-Fi is
# bounded by wifi.timeout_ms (default 15 s) so a board without a network still reaches its REPL;
# every problem (missing or broken config, a service failing) is one line.
# SERVICES is the one list of what "start" may name: the host's provision reads it from here.
import wsconfig

SERVICES = ("wifi", "mdns", "telnet", "announce")
TIMEOUT_MS = 15000


def main():
    cfg = wsconfig.load()
    start = cfg.get("start") or []
    if not isinstance(start, list):
        print("workshop: \"start\" must be a list of service names")
        return
    ip = None
    up = []  # what started: only a telnet that runs is advertised (mDNS) and announced
    t = cfg.get("telnet")
    tport = t.get("port") or 23 if isinstance(t, dict) else 23  # a bad section is named when telnet starts
    for name in SERVICES:
        if name not in start:
            continue
        try:
            if name == "wifi":
                import wifi
                w = wsconfig.section(cfg, "wifi")  # passed on: the services do not parse the file again
                ip = wifi.connect(w.get("ssid"), w.get("password"), w.get("timeout_ms") or TIMEOUT_MS,
                                  cfg.get("hostname") or "")
                print("workshop: wifi up,", ip)
            elif ip is None and name != "telnet":
                print("workshop: %s not started: no network" % name)
                continue
            elif name == "mdns":
                import mdns
                mdns.start(cfg.get("hostname"), ip)
            elif name == "telnet":
                import telnet
                t = wsconfig.section(cfg, "telnet")
                kw = {"port": tport} if t.get("port") else {}
                telnet.start(user=t.get("user") or "micro", password=t.get("password"), **kw)
                up.append(name)
                if "mdns" in up:
                    import mdns
                    mdns.add_service("_telnet._tcp", tport)
                continue
            else:
                import announce
                announce.start(cfg, telnet_port=tport if "telnet" in up else None)
            up.append(name)
        except KeyboardInterrupt:
            print("workshop: start-up interrupted")
            return
        except Exception as e:
            print("workshop: %s not started: %s" % (name, e))
    for name in start:
        if name not in SERVICES:
            print("workshop: unknown service %r in \"start\"" % name)


main()

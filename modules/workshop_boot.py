# workshop_boot: boot.py on a workshop board is `import workshop_boot`. It reads /workshop.json
# and starts the services listed under "start" ("wifi", "mdns", "telnet"), in that order of
# need: Wi-Fi is bounded by wifi.timeout_ms (default 15 s) so a board without a network still
# reaches its REPL; every problem (missing or broken config, a service failing) is one line.
import wsconfig

TIMEOUT_MS = 15000


def main():
    cfg = wsconfig.load()
    start = cfg.get("start") or []
    if not isinstance(start, list):
        print("workshop: \"start\" must be a list of service names")
        return
    ip = None
    for name in ("wifi", "mdns", "telnet"):
        if name not in start:
            continue
        try:
            if name == "wifi":
                import wifi
                w = wsconfig.section(cfg, "wifi")  # passed on: the services do not parse the file again
                ip = wifi.connect(w.get("ssid"), w.get("password"), w.get("timeout_ms") or TIMEOUT_MS,
                                  cfg.get("hostname") or "")
                print("workshop: wifi up,", ip)
            elif name == "mdns":
                if ip is None:
                    print("workshop: mdns not started: no network")
                    continue
                import mdns
                mdns.start(cfg.get("hostname"), ip)
                if "telnet" in start:
                    mdns.add_service("_telnet._tcp", 23)
            else:
                import telnet
                t = wsconfig.section(cfg, "telnet")
                telnet.start(user=t.get("user") or "micro", password=t.get("password"))
        except KeyboardInterrupt:
            print("workshop: start-up interrupted")
            return
        except Exception as e:
            print("workshop: %s not started: %s" % (name, e))
    for name in start:
        if name not in ("wifi", "mdns", "telnet"):
            print("workshop: unknown service %r in \"start\"" % name)


main()

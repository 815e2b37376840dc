// Command database is the demo OpenBao database plugin (dbplugin v5) (see package baoplugin).
package main

import "vaultpluginshim/baoplugin"

// Set at build time: -ldflags "-X main.version=v1.2.3" (OpenBao needs the leading v).
var version = "v0.0.0"

func main() { baoplugin.ServeDatabase(version) }

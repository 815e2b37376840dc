// Command auth serves engine's auth plugin. Set at build time:
//
//	go build -ldflags "-X main.version=v1.0.0 -X main.multiplex=true"
//
// (multiplex=true: plugin.ServeMultiplex, one process for every mount).
package main

import (
	"os"

	"vaultpluginshim/sdkplugin/engine"
)

var (
	version   = "v0.0.0"
	multiplex = "false"
)

func main() { os.Exit(engine.Serve("auth", version, multiplex == "true")) }

// Package memdb is a database plugin on OpenBao's dbplugin v5: a "database" that is a
// directory of JSON files, one per user, so tests can see what the plugin did. User names
// start with the version that made them (v1-0-0-<role>-<random>).
//
// Connection parameter: directory (absolute path, must exist).
package memdb

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-secure-stdlib/base62"
	"github.com/openbao/openbao/sdk/v2/database/dbplugin/v5"
	"github.com/openbao/openbao/sdk/v2/logical"
)

// DB is one connection's instance; a multiplexed process holds one per connection.
type DB struct {
	version   string
	mu        sync.Mutex
	directory string
}

var _ dbplugin.Database = (*DB)(nil)
var _ logical.PluginVersioner = (*DB)(nil)

// New is the factory dbplugin.ServeMultiplex wants.
func New(version string) dbplugin.Factory {
	return func() (interface{}, error) { return &DB{version: version}, nil }
}

// PluginVersion is what OpenBao records in the catalog (vX.Y.Z).
func (db *DB) PluginVersion() logical.PluginVersion {
	return logical.PluginVersion{Version: db.version}
}

func (db *DB) Initialize(ctx context.Context, req dbplugin.InitializeRequest) (dbplugin.InitializeResponse, error) {
	dir, _ := req.Config["directory"].(string)
	if !filepath.IsAbs(dir) {
		return dbplugin.InitializeResponse{}, fmt.Errorf("connection parameter \"directory\" must be an absolute path, not %q", dir)
	}
	if req.VerifyConnection {
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return dbplugin.InitializeResponse{}, fmt.Errorf("connection parameter \"directory\": %s is not a directory", dir)
		}
	}
	db.mu.Lock()
	db.directory = dir
	db.mu.Unlock()
	return dbplugin.InitializeResponse{Config: req.Config}, nil
}

type user struct {
	Role           string   `json:"role"`
	CreatedBy      string   `json:"created_by"`
	UpdatedBy      string   `json:"updated_by,omitempty"`
	Statements     []string `json:"statements"`
	PasswordSHA256 string   `json:"password_sha256"`
	Expiration     string   `json:"expiration"`
}

func (db *DB) file(name string) (string, error) {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.directory == "" {
		return "", errors.New("the connection is not initialized")
	}
	if strings.ContainsAny(name, "/\x00") || name == "" || name[0] == '.' {
		return "", fmt.Errorf("invalid user name %q", name)
	}
	return filepath.Join(db.directory, name+".json"), nil
}

func digest(password string) string {
	sum := sha256.Sum256([]byte(password))
	return hex.EncodeToString(sum[:])
}

func (db *DB) NewUser(ctx context.Context, req dbplugin.NewUserRequest) (dbplugin.NewUserResponse, error) {
	suffix, err := base62.Random(8)
	if err != nil {
		return dbplugin.NewUserResponse{}, err
	}
	name := fmt.Sprintf("%s-%s-%s", strings.ReplaceAll(db.version, ".", "-"), req.UsernameConfig.RoleName, suffix)
	path, err := db.file(name)
	if err != nil {
		return dbplugin.NewUserResponse{}, err
	}
	u := user{Role: req.UsernameConfig.RoleName, CreatedBy: db.version, Statements: req.Statements.Commands,
		PasswordSHA256: digest(req.Password), Expiration: req.Expiration.UTC().Format(time.RFC3339)}
	return dbplugin.NewUserResponse{Username: name}, writeJSON(path, u)
}

func (db *DB) UpdateUser(ctx context.Context, req dbplugin.UpdateUserRequest) (dbplugin.UpdateUserResponse, error) {
	path, err := db.file(req.Username)
	if err != nil {
		return dbplugin.UpdateUserResponse{}, err
	}
	var u user
	raw, err := os.ReadFile(path)
	if err != nil {
		return dbplugin.UpdateUserResponse{}, err
	}
	if err := json.Unmarshal(raw, &u); err != nil {
		return dbplugin.UpdateUserResponse{}, err
	}
	if req.Password != nil {
		u.PasswordSHA256 = digest(req.Password.NewPassword)
	}
	if req.Expiration != nil {
		u.Expiration = req.Expiration.NewExpiration.UTC().Format(time.RFC3339)
	}
	u.UpdatedBy = db.version
	return dbplugin.UpdateUserResponse{}, writeJSON(path, u)
}

func (db *DB) DeleteUser(ctx context.Context, req dbplugin.DeleteUserRequest) (dbplugin.DeleteUserResponse, error) {
	path, err := db.file(req.Username)
	if err != nil {
		return dbplugin.DeleteUserResponse{}, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return dbplugin.DeleteUserResponse{}, err
	}
	return dbplugin.DeleteUserResponse{}, nil
}

func (db *DB) Type() (string, error) { return "sdkmemdb", nil }

func (db *DB) Close() error { return nil }

func writeJSON(path string, v interface{}) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

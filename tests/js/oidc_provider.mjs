// A real OpenID Connect provider on loopback (the oidc-provider package, with its development
// login and consent pages: any login and password are accepted). Run by tests/e2e/test_sso.py and
// tests/e2e/test_sso_session.py.
// The login names an account in ACCOUNTS below; its claims are what the relying party receives.
// Usage: OIDC_PORT=0 OIDC_CLIENT_ID=… OIDC_CLIENT_SECRET=… OIDC_REDIRECT_URI=…
//        [OIDC_POST_LOGOUT_REDIRECT_URI=…] [OIDC_REFRESH_TOKENS=0] node oidc_provider.mjs
// Prints one line, {"issuer": "http://127.0.0.1:PORT"}, once it listens. Refresh tokens are
// issued to the client at every sign-in (as Keycloak and Entra ID do, without offline_access).
// Commands on stdin, one a line, each answered by one JSON line on stdout once done:
//   disable NAME   the account is disabled: it is found no more (a refresh grant for it is
//                  refused with invalid_grant, its access tokens with 401 at userinfo)
import http from "node:http";
import readline from "node:readline";
import Provider from "oidc-provider";

const ACCOUNTS = {
  ada: { email: "ada@example.com", name: "Ada Lovelace", groups: ["research", "staff-models"] },
  eve: { email: "eve@elsewhere.test", name: "Eve", groups: ["research"] },
};

const disabled = new Set();

const server = http.createServer();
await new Promise((resolve) => server.listen(Number(process.env.OIDC_PORT ?? 0), "127.0.0.1", resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: process.env.OIDC_CLIENT_ID,
      client_secret: process.env.OIDC_CLIENT_SECRET,
      redirect_uris: [process.env.OIDC_REDIRECT_URI],
      response_types: ["code"],
      grant_types: ["authorization_code", "refresh_token"],
      post_logout_redirect_uris: process.env.OIDC_POST_LOGOUT_REDIRECT_URI
        ? [process.env.OIDC_POST_LOGOUT_REDIRECT_URI]
        : [],
    },
  ],
  // OIDC_REFRESH_TOKENS=0: none, as a provider that issues them only with offline_access.
  async issueRefreshToken(ctx, client) {
    return process.env.OIDC_REFRESH_TOKENS !== "0" && client.grantTypeAllowed("refresh_token");
  },
  scopes: ["openid", "email", "profile", "groups"],
  claims: {
    openid: ["sub"],
    email: ["email", "email_verified"],
    profile: ["name", "preferred_username"],
    groups: ["groups"],
  },
  async findAccount(ctx, sub) {
    const account = ACCOUNTS[sub];
    if (!account || disabled.has(sub)) return undefined;
    return {
      accountId: sub,
      async claims() {
        return { sub, preferred_username: sub, email_verified: true, ...account };
      },
    };
  },
});
server.on("request", provider.callback());
console.log(JSON.stringify({ issuer }));

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const [command, name] = line.trim().split(/\s+/);
  if (command === "disable") {
    disabled.add(name);
    console.log(JSON.stringify({ disabled: name }));
  } else {
    console.log(JSON.stringify({ error: `unknown command: ${line}` }));
  }
});

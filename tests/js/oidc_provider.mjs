// A real OpenID Connect provider on loopback (the oidc-provider package, with its development
// login and consent pages: any login and password are accepted). Run by tests/e2e/test_sso.py.
// The login names an account in ACCOUNTS below; its claims are what the relying party receives.
// Usage: OIDC_PORT=0 OIDC_CLIENT_ID=… OIDC_CLIENT_SECRET=… OIDC_REDIRECT_URI=… node oidc_provider.mjs
// Prints one line, {"issuer": "http://127.0.0.1:PORT"}, once it listens.
import http from "node:http";
import Provider from "oidc-provider";

const ACCOUNTS = {
  ada: { email: "ada@example.com", name: "Ada Lovelace", groups: ["research", "staff-models"] },
  eve: { email: "eve@elsewhere.test", name: "Eve", groups: ["research"] },
};

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
      grant_types: ["authorization_code"],
    },
  ],
  scopes: ["openid", "email", "profile", "groups"],
  claims: {
    openid: ["sub"],
    email: ["email", "email_verified"],
    profile: ["name", "preferred_username"],
    groups: ["groups"],
  },
  async findAccount(ctx, sub) {
    const account = ACCOUNTS[sub];
    if (!account) return undefined;
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

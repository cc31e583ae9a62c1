import {postJSON, say} from "./common.js";

const form = document.getElementById("signup");
const message = document.getElementById("message");
// The invite token is the last part of this page's path (/web/invite/TOKEN).
const token = decodeURIComponent(location.pathname.split("/").pop());
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (form.password.value.length < 12) return say(message, "The password needs 12 characters or more.", "error");
  if (form.password.value !== form.password2.value) return say(message, "The passwords differ.", "error");
  say(message, "Signing up…");
  try {
    await postJSON("/v1/signup", {token, password: form.password.value, otp_code: form.otp_code.value.trim()});
    form.querySelector("button").disabled = true;
    message.className = "ok";
    message.replaceChildren("Signed up. ", Object.assign(document.createElement("a"),
      {href: "/web/login", textContent: "Log in"}));
  } catch (error) {
    say(message, error.message, "error");
  }
});

import {postJSON, say} from "./common.js";

const form = document.getElementById("login");
const message = document.getElementById("message");
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  say(message, "Checking…");
  try {
    await postJSON("/web/api/login", {
      user: form.user.value, password: form.password.value, otp_code: form.otp_code.value.trim(),
    });
    location.assign("/web/nodes");
  } catch (error) {
    form.otp_code.value = "";
    say(message, error.message, "error");
  }
});
